"""`bench models` (the registered models) and `bench doctor` (versions, scan backend, plugins)."""

from __future__ import annotations

import os
import sys

import typer


def models() -> None:
    """List registered models with family, paper configuration and source.

    Example: bench models
    """
    from bench.registry import get_entry, is_builtin, list_models

    width = max([12, *map(len, list_models())])  # a plugin's longer name keeps the columns
    indent = " " * (width + 14)
    typer.echo(f"{'model':{width}s} {'family':12s} description")
    for name in list_models():
        e = get_entry(name)
        cfg = ", ".join(f"{k}={v}" for k, v in e.paper_config.items())
        init = (f"{e.init[1]} (load_weights source {e.init[0]!r})" if e.init
                else "none (the authors train from scratch)" if is_builtin(name) else "none")
        typer.echo(f"{name:{width}s} {e.family:12s} {e.description}\n{indent}paper config: {cfg}\n{indent}source: "
                   f"{e.source}\n{indent}pretrained init: {init}")


def doctor() -> None:
    """Code version, Python/torch/CUDA versions, the selective-scan backend and why, mamba-ssm, model plugins.

    Exit 1 where one of them would stop a command (a forced scan backend that cannot run, a plugin that fails).

    Example: bench doctor
    """
    import platform

    import torch

    from bench import env
    from bench.records import code_version, short_commit, short_fingerprint

    typer.echo(f"python       {platform.python_version()} ({sys.executable})")
    # what run records will name the code by (records.code_version): the commit, else the sources' digest
    commit = env.git_commit()
    typer.echo(f"code         {short_commit(code_version(commit, env.source_digest()))}"
               f"{'' if commit else ' (outside a git checkout)'}")
    for name, version in env.package_versions().items():
        typer.echo(f"{name:28s} {version or '-'}")
    cuda = torch.cuda.is_available()
    typer.echo(f"torch CUDA   {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available'}"
               f" (built with CUDA {torch.version.cuda})")
    usable = env.usable_cores()  # a Slurm job's --cpus-per-task, taskset: not the machine's count
    typer.echo(f"threads      {torch.get_num_threads()} of the {usable} cores this process may use"
               + (f" ({os.cpu_count()} on the machine)" if usable != os.cpu_count() else ""))
    typer.echo(f"device       {short_fingerprint(env.fingerprint('cuda' if cuda else 'cpu'))}")
    from ssm_models.scan import backend_report, forced_backend_problem  # in bench's own wheel: always there

    typer.echo(f"scan backend {backend_report()}")
    typer.echo(f"mamba-ssm    {_mamba_status()}")
    from bench import registry

    registry.list_models()  # loads the plugins
    plugins = [f"{k}: {', '.join(v) or 'no models'}" for k, v in registry.PLUGIN_MODELS.items()]
    plugins += [f"{k}: failed to load ({v})" for k, v in registry.PLUGIN_ERRORS.items()]
    typer.echo(f"plugins      {'; '.join(plugins) or f'none (entry point group {registry.ENTRY_POINT_GROUP})'}")
    # the whole report first; then exit 1 where a command would fail here, so a script or CI can ask it
    problems = [p for p in (forced_backend_problem(), registry.old_torch_problem()) if p]
    problems += [f"model plugin {k} failed to load" for k in registry.PLUGIN_ERRORS]
    if problems:
        typer.secho(f"doctor: {len(problems)} problem(s): {'; '.join(problems)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)


def _mamba_status() -> str:
    """Whether mamba-ssm and its compiled kernels load, without importing mamba_ssm itself
    (12 s of imports on CPU, and it fails there without its CUDA extension)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("mamba_ssm") is None:
        return "not installed (CPU machines use the built-in scan; `make setup` adds it where CUDA exists)"
    parts = []
    for ext in ("selective_scan_cuda", "causal_conv1d_cuda"):
        try:
            importlib.import_module(ext)
            parts.append(f"{ext} loads")
        except Exception as exc:  # ImportError, OSError from a CUDA/ABI mismatch, …
            parts.append(f"{ext} does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
    return "installed; " + "; ".join(parts)
