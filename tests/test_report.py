import io
import json
import math
import re
import shutil
import subprocess
import statistics

import pandas as pd
import pytest

from bench.data.synapse import TRANSUNET_TEST_CASES
from bench.errors import BenchError
from bench.protocol import load_protocol
from bench.records import load, write_record
from bench.report import BoardKey, latex_escape, leaderboards, parse_columns, render, write_report

try:
    from tests.fixtures import make_record, md_rows, recount, restate
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fixtures import make_record, md_rows, recount, restate


@pytest.fixture
def runs(tmp_path):
    """Synapse: vmunet 3 seeds, unet 2 seeds (one with a low aorta), an off-protocol vmunet run;
    ISIC17: one vmunet run."""
    for seed, d in enumerate([0.80, 0.82, 0.84]):
        write_record(make_record("vmunet", seed=seed, dice=d, hd95=18.0 + seed), tmp_path)
    write_record(make_record("unet", seed=0, dice=0.76, class_dice={"aorta": 0.60}, hd95=30.0, params=31_040_000), tmp_path)
    write_record(make_record("unet", seed=1, dice=0.78, hd95=28.0, params=31_040_000), tmp_path)
    write_record(make_record("vmunet", seed=0, dice=0.99, overrides={"epochs": 2}), tmp_path)
    write_record(make_record("vmunet", dataset="isic17", seed=0, dice=0.88), tmp_path)
    return load(tmp_path)


def test_render_from_python_gives_bench_reports_tables(runs, tmp_path):
    # render(runs) alone lacked the CI columns bench report shows; given the case rows (and profiles)
    # it gives the same boards, which bench report's Markdown follows with its own sections
    from bench import cost, profiles

    profiles.write_profile(cost.profile_model("unet", img_size=32, tiny=True, timing=False), tmp_path)
    cases, rows = load(tmp_path, level="case"), profiles.load_profiles(tmp_path)
    for fmt in ("latex", "csv", "cases"):
        assert render(runs, fmt, cases, rows) == write_report(tmp_path, fmt), fmt
    md = render(runs, "md", cases, rows)
    full = write_report(tmp_path)
    assert full.startswith(md.rstrip("\n")) and "## Cost" in full[len(md):] and "## Cost" not in md
    assert "DSC 95% CI" in md and "DSC 95% CI" not in render(runs, "md")
    with pytest.raises(BenchError, match="format 'cases' needs the records' case rows: pass df_cases"):
        render(runs, "cases")
    with pytest.raises(BenchError, match="--columns chooses the Markdown and LaTeX tables' columns; --format cases"):
        render(runs, "cases", cases, columns=("metrics",))


def test_boards_are_split_by_dataset_protocol_policy(runs, tmp_path):
    """A run scored under another metric policy, or under an edited copy of a protocol (same name, other hash),
    measured otherwise: averaged with the rest, its model's DSC would be a mean of two things."""
    boards = leaderboards(runs)
    assert set(boards) == {
        BoardKey("isic17", "isic17", "legacy-isic"),
        BoardKey("synapse", "synapse", "legacy-synapse"),
        BoardKey("synapse", "synapse (off-protocol: epochs=2)", "legacy-synapse"),
    }
    # plain tuples index too
    assert len(boards[("synapse", "synapse", "legacy-synapse")]) == 2
    write_record(make_record("vmunet", seed=0, dice=0.70), tmp_path / "policy")
    strict = make_record("vmunet", seed=1, dice=0.90)
    write_record(restate({**strict, "policy": "strict"}), tmp_path / "policy")
    means = {k: b["dice_mean"].tolist() for k, b in leaderboards(load(tmp_path / "policy")).items()}
    assert means == {("synapse", "synapse", "legacy-synapse"): pytest.approx([0.70]),
                     ("synapse", "synapse", "strict"): pytest.approx([0.90])}
    for seed, (digest, dice) in enumerate((("aaaaaaaa11111111", 0.70), ("bbbbbbbb22222222", 0.80))):
        rec = make_record("vmunet", seed=seed, dice=dice)
        rec["protocol"]["hash"] = digest
        write_record(rec, tmp_path / "hash")
    means = {k: b["dice_mean"].tolist() for k, b in leaderboards(load(tmp_path / "hash")).items()}
    # the two contents told apart by their hashes' first 8 characters
    assert means == {("synapse", "synapse@aaaaaaaa", "legacy-synapse"): pytest.approx([0.70]),
                     ("synapse", "synapse@bbbbbbbb", "legacy-synapse"): pytest.approx([0.80])}


def test_off_protocol_never_mixed(runs):
    boards = leaderboards(runs)
    on = boards[("synapse", "synapse", "legacy-synapse")]
    off = boards[("synapse", "synapse (off-protocol: epochs=2)", "legacy-synapse")]
    vm = on.set_index("model").loc["vmunet"]
    assert vm["n_seeds"] == 3 and vm["dice_mean"] == pytest.approx(0.82)  # the 0.99 run is not in
    assert list(off["model"]) == ["vmunet"] and off["dice_mean"].iloc[0] == pytest.approx(0.99)


def test_mean_std_hand_computed_and_sorted(runs):
    board = leaderboards(runs)[("synapse", "synapse", "legacy-synapse")]
    assert list(board["model"]) == ["vmunet", "unet"]  # DSC descending
    vm, un = board.iloc[0], board.iloc[1]
    assert vm["dice_mean"] == pytest.approx(0.82)
    assert vm["dice_std"] == pytest.approx(statistics.stdev([0.80, 0.82, 0.84]))  # 0.02, ddof=1
    assert vm["hd95_mean"] == pytest.approx(19.0) and vm["hd95_std"] == pytest.approx(1.0)
    unet_dice = [(0.60 + 7 * 0.76) / 8, 0.78]
    assert un["dice_mean"] == pytest.approx(statistics.mean(unet_dice))
    assert un["dice_std"] == pytest.approx(statistics.stdev(unet_dice))
    assert un["dice/aorta_mean"] == pytest.approx(0.69) and un["dice/liver_mean"] == pytest.approx(0.77)
    assert un["n_seeds"] == 2 and un["params"] == 31_040_000
    assert "acc_mean" not in board  # no data for it in this board


def test_a_model_whose_dsc_is_nan_is_the_last_row(tmp_path):
    """Guards against a NaN DSC sorted to the top of the board."""
    for model, dice in (("unet", 0.70), ("vmunet", 0.80), ("transunet", 0.75)):
        rec = make_record(model, dice=dice)
        if model == "transunet":
            rec["metrics"]["dice"] = None  # undefined, e.g. strict with a class valid in no case
        write_record(rec, tmp_path)
    board = leaderboards(load(tmp_path))[("synapse", "synapse", "legacy-synapse")]
    assert list(board["model"]) == ["vmunet", "unet", "transunet"]


def test_synapse_organ_order(runs):
    board = leaderboards(runs)[("synapse", "synapse", "legacy-synapse")]
    organs = [c[len("dice/"):-len("_mean")] for c in board.columns if c.startswith("dice/") and c.endswith("_mean")]
    assert organs == ["aorta", "gallbladder", "kidney_l", "kidney_r", "liver", "pancreas", "spleen", "stomach"]
    md = render(runs)
    section = md[md.index("## synapse · protocol synapse v1"):]
    header = next(line for line in section.splitlines() if line.startswith("| Model"))
    names = ["Aorta", "Gallbladder", "Kidney(L)", "Kidney(R)", "Liver", "Pancreas", "Spleen", "Stomach"]
    positions = [header.index(n) for n in names]
    assert positions == sorted(positions)
    assert header.index("DSC") < header.index("HD95") < positions[0]


def test_organ_display_order_does_not_follow_class_ids(tmp_path):
    # raw BTCV-style ids (spleen=1 ...) must still print in the papers' column order
    ids = ["spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
    write_record(make_record("unet", classes=ids), tmp_path)
    board = leaderboards(load(tmp_path))[("synapse", "synapse", "legacy-synapse")]
    organs = [c[len("dice/"):-len("_mean")] for c in board.columns if c.startswith("dice/") and c.endswith("_mean")]
    assert organs == ["aorta", "gallbladder", "kidney_l", "kidney_r", "liver", "pancreas", "spleen", "stomach"]


def test_other_datasets_keep_class_id_order(tmp_path):
    write_record(make_record("unet", dataset="acdc", protocol="acdc", classes=["rv", "myo", "lv"]), tmp_path)
    board = next(iter(leaderboards(load(tmp_path)).values()))
    means = [c for c in board.columns if c.endswith("_mean")]
    assert means[-6:] == [f"{m}/{c}_mean" for m in ("dice", "hd95") for c in ("rv", "myo", "lv")]


def test_binary_board_has_no_per_class_columns(runs):
    board = leaderboards(runs)[("isic17", "isic17", "legacy-isic")]
    assert not [c for c in board.columns if c.startswith("dice/")]
    assert {"acc_mean", "spe_mean", "sen_mean", "iou_mean"} <= set(board.columns)
    assert "hd95_mean" not in board


def test_nan_is_propagated_not_dropped(tmp_path):
    write_record(make_record("unet", seed=0, hd95=10.0), tmp_path)
    write_record(make_record("unet", seed=1, hd95=float("nan")), tmp_path)
    board = leaderboards(load(tmp_path))[("synapse", "synapse", "legacy-synapse")]
    assert pd.isna(board["hd95_mean"].iloc[0])
    assert board["hd95_n_nan"].iloc[0] == 1
    assert re.search(r"\| +nan \(1/2 runs\) \|", render(load(tmp_path)))


def test_markdown(runs):
    md = render(runs, "md")
    synapse = load_protocol("synapse").hash
    assert f"## synapse · protocol synapse v1 ({synapse}) · policy legacy-synapse" in md
    assert f"## synapse · protocol synapse v1 ({synapse}) · OFF-PROTOCOL (epochs=2) · policy" in md
    assert "policy legacy-isic" in md
    assert "over seeds: 2/3 per model; test cases per run: 2" in md
    assert "82.00 ± 2.00" in md  # vmunet DSC ×100
    assert "19.00 ± 1.00" in md  # vmunet HD95, not scaled
    assert "| vmunet" in md and "27.43" in md  # params in M
    assert re.search(r"\| +99\.00 \|", md)  # one seed: no ± part


def test_latex(runs):
    tex = render(runs, "latex")
    assert tex.count("\\begin{tabular}") == 3 and tex.count("\\toprule") == 3
    assert "\\midrule" in tex and "\\bottomrule" in tex
    assert "82.00 $\\pm$ 2.00" in tex
    assert "legacy-synapse" in tex and "Kidney(L)" in tex
    assert "DSC $\\uparrow$ (\\%)" in tex


def test_latex_rows_of_columns_alike_under_unicode_normalisation(tmp_path):
    """Class names "Leber" and full-width "Ｌｅｂｅｒ" (a Japanese input method's): rows were namedtuples,
    whose field names NFKC-normalise to one, and the LaTeX report crashed on a duplicate argument."""
    write_record(make_record("unet", seed=0, dataset="nnunet", classes=["Leber", "Ｌｅｂｅｒ"],
                             class_dice={"Leber": 0.5, "Ｌｅｂｅｒ": 0.7}), tmp_path)
    with pytest.warns(UserWarning, match=r"outside Latin-1 \(Ｌ, ｂ, ｅ, ｒ\) that pdflatex cannot set: compile it "
                                         "with xelatex or lualatex") as said:
        tex = write_report(tmp_path, "latex")
    assert "Ｌｅｂｅｒ" in tex and "70.00" in tex and len([w for w in said if "Latin-1" in str(w.message)]) == 1


def test_paper_columns_and_labels_for_latex(runs, tmp_path):
    # a paper's table: the metrics and per-organ DSC only (31 columns were shrunk to 1.6 pt type), a
    # \label per board, and a caption that speaks only of the columns shown
    from bench.report import COLUMN_GROUPS

    tex = render(runs, "latex", load(tmp_path, level="case"), columns=parse_columns("paper"))
    isic, synapse, _ = [line for line in tex.splitlines() if line.startswith("Model & ")]
    assert isic == "Model & DSC $\\uparrow$ (\\%) & mIoU $\\uparrow$ (\\%) & Acc $\\uparrow$ (\\%) & Spe $\\uparrow$ (\\%) & Sen $\\uparrow$ (\\%) \\\\"
    # the metrics the papers report: Synapse's DSC and HD95 (no mIoU), ISIC's five
    assert synapse == ("Model & DSC $\\uparrow$ (\\%) & HD95 $\\downarrow$ & Aorta & Gallbladder & "
                      "Kidney(L) & Kidney(R) & Liver & Pancreas & Spleen & Stomach \\\\")
    assert "\\begin{tabular}{lrrrrrrrrrr}" in tex and "95\\% CI" not in tex
    # each column's best mean in bold (vmunet: DSC 82, HD95 19, every organ), per-class cells as means;
    # a board of one model bolds nothing; 2 test cases separate nothing (†)
    board = tex[tex.index("synapse $\\cdot$ protocol synapse v1"):]
    vm = next(line for line in board.splitlines() if line.startswith("vmunet &"))
    assert vm == "vmunet & \\textbf{82.00 $\\pm$ 2.00 $^\\dagger$} & \\textbf{19.00 $\\pm$ 1.00 $^\\dagger$} & " + \
        " & ".join(["\\textbf{82.00}"] * 8) + " \\\\"
    un = next(line for line in board.splitlines() if line.startswith("unet &"))
    assert un.split(" & ")[3] == "69.00" and "textbf" not in un  # aorta: (0.60 + 0.78) / 2, no ± std
    assert "Bold: each column's best mean, tested against the runner-up" in board.split("\\label")[0]
    assert "untested (best mean only): the per-class columns; per-class cells are means." in board.split("\\label")[0]
    assert "textbf" not in tex[:tex.index("synapse $\\cdot$")] and "Bold:" not in tex[:tex.index("synapse $\\cdot$")]
    md = render(runs, "md", load(tmp_path, level="case"), columns=parse_columns("paper"))
    assert "| vmunet  | **82.00 ± 2.00 †** |" in md
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert labels == ["tab:isic17-isic17-legacy-isic-paper-metrics-classes",
                      "tab:synapse-synapse-legacy-synapse-paper-metrics-classes",
                      "tab:synapse-synapse-off-protocol-epochs-2-legacy-synapse-paper-metrics-classes"]
    # another selection of the same boards, in another file of the same paper: labels of its own
    cost = render(runs, "latex", load(tmp_path, level="case"), columns=parse_columns("params"))
    assert not set(labels) & set(re.findall(r"\\label\{([^}]*)\}", cost))
    whole = render(runs, "latex", load(tmp_path, level="case"))
    assert re.findall(r"\\label\{([^}]*)\}", whole)[0] == "tab:isic17-isic17-legacy-isic"
    md = render(runs, "md", load(tmp_path, level="case"), columns=parse_columns("family,ci"))
    header = [line for line in md.splitlines() if line.startswith("| Model")][1]  # synapse's
    assert [c.strip() for c in header.strip("|").split("|")] == ["Model", "Family", "DSC 95% CI", "HD95 95% CI"]
    assert "95% CI: percentile bootstrap" in md
    assert parse_columns("paper,params") == ("paper", "metrics", "classes", "params") and parse_columns(None) is None
    assert parse_columns("all") is None and parse_columns(" ALL ") == tuple(COLUMN_GROUPS)
    with pytest.raises(BenchError, match=r"--columns 'clases': not a column group \(did you mean 'classes'\?\)"):
        parse_columns("metrics,clases")
    with pytest.raises(BenchError, match="--columns chooses the Markdown and LaTeX tables' columns; --format csv"):
        render(runs, "csv", columns=("metrics",))
    # names keep their hyphens (a GPU's, a weights file's date); × and friends are escaped
    assert latex_escape("A100-SXM4-80GB unet-2024-05-01.pth 2 × 3") == "A100-SXM4-80GB unet-2024-05-01.pth 2 $\\times$ 3"
    # symbols pdflatex cannot take raw, and pairs it would read as other text: "--" an en dash, ">=" two characters
    assert latex_escape("≥ ≤ ≠ … → μs µs") == "$\\geq$ $\\leq$ $\\neq$ \\ldots{} $\\rightarrow$ $\\mu$s $\\mu$s"
    assert latex_escape("pass one as --reference, p >= 0.05, a<=b, x---y, 0–4") == \
        "pass one as -{}-reference, p $\\geq$ 0.05, a$\\leq$b, x-{}-{}-y, 0--4"
    assert latex_escape('a mark such as "(noisy)": 5" wide') == "a mark such as ``(noisy)'': 5\\texttt{\\char34} wide"
    # marks after a digit are inches, not a pair: only a quote after a space or sign opens one
    assert latex_escape('12" and 3" (x="a")') == '12\\texttt{\\char34} and 3\\texttt{\\char34} (x=``a\'\')'
    caption = render(runs, "md", columns=("family",)).split("\n\n")[1]
    assert "in %" not in caption and "NaN is shown" not in caption  # no metric column shown, none explained
    # the cost columns say at which input their GMACs were counted, where they are shown
    rec = make_record("unet", seed=0, dataset="isic18")
    rec["cost"].update(macs=4.1e9, paper_macs=4.0e9)
    write_record(rec, tmp_path)
    md = render(load(tmp_path), "md")
    isic18 = md[md.index("## isic18"):]
    assert "GMACs (scan incl.) |" in isic18 and "GMACs: one forward of one input at the protocol's input size" in isic18
    assert "GMACs: one forward" not in render(load(tmp_path), "md", columns=("metrics",))


def test_labels_with_markup_characters_keep_tables_whole(tmp_path):
    """A config value may hold | < > " and non-ASCII: Markdown escapes the pipe (else the row's
    columns shift), LaTeX each character, labels show the text, not JSON escapes; a wide LaTeX
    table is scaled to the line."""
    write_record(make_record("unet", seed=0, model_config={"norm": "a|b<c>"}), tmp_path)
    write_record(make_record("unet", seed=1, model_config={"norm": "Überprüfung"}), tmp_path)
    md = render(load(tmp_path), "md")
    rows = [line for line in md.splitlines() if line.startswith("| unet")]
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    cells = lambda line: len(re.split(r"(?<!\\)\|", line))  # noqa: E731
    assert len(rows) == 2 and all(cells(r) == cells(header) for r in rows)
    assert 'unet (norm="a\\|b<c>")' in md and 'unet (norm="Überprüfung")' in md
    tex = render(load(tmp_path), "latex")
    # a value's quotes are TeX's pair (a straight one is set as the typewriter's character)
    assert "unet (norm=``a\\textbar{}b\\textless{}c\\textgreater{}'')" in tex and "\\texttt{\\char34}" not in tex
    assert tex.count("\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%") == 1  # shrunk only
    assert "graphicx" in tex


def test_latex_reports_carry_the_cost_tables(tmp_path):
    """A paper's cost table (params, GMACs, latency) was Markdown only: LaTeX held the boards alone."""
    from bench import cost, profiles

    write_record(make_record("unet", seed=0), tmp_path)
    profiles.write_profile(cost.profile_model("unet", img_size=32, tiny=True, iters=2, warmup=1), tmp_path)
    tex = write_report(tmp_path, "latex")
    title = "Cost · input 1x3x32x32 · fp32 · ".replace("·", "$\\cdot$")
    table = tex[tex.index("\\caption[{" + title):]
    assert "\\label{tab:cost-input-1x3x32x32-fp32}" in table and "latency\\_ms\\_median & " in table
    assert "unet (tiny) & cnn & 0.1352 M" in table and "M = 10$^6$, G = 10$^9$" in table
    assert all(ord(ch) < 256 for ch in tex), "pdflatex takes Latin-1 alone"
    assert "Cost" not in write_report(tmp_path, "latex", columns=("metrics",))  # --columns without cost
    # --columns paper,cost: a paper's cost table, the few columns readers compare, named for them
    paper = write_report(tmp_path, "latex", columns=parse_columns("paper,cost"))
    paper = paper[paper.index("\\caption[{" + title):]
    assert "Model & Params & GMACs (scan incl.) & thop GMACs & Latency (ms) & FPS \\\\" in paper
    row = next(line for line in paper.splitlines() if line.startswith("unet (tiny) & "))
    assert row.startswith("unet (tiny) & 0.1352 M & ") and row.count(" & ") == 5
    assert "\\label{tab:cost-input-1x3x32x32-fp32-paper}" in paper and all(ord(ch) < 256 for ch in paper)
    from typer.testing import CliRunner

    from bench.cli import app

    cli = CliRunner().invoke(app, ["profile", "--models", "unet", "--tiny", "--img-size", "32", "--no-timing",
                                   "--results", str(tmp_path / "p"), "--format", "latex"])
    # its own labels (a report's and a profile's tables of one paper defined one label twice), the packages named
    assert cli.exit_code == 0 and "\\label{tab:profile-input-1x3x32x32-fp32}" in cli.stdout
    assert cli.stdout.startswith("% Requires \\usepackage{booktabs} and \\usepackage{graphicx}")
    assert "\\usepackage[T1]{fontenc}" in cli.stdout.splitlines()[0] and tex.startswith(cli.stdout.splitlines()[0])


def test_latex_cells_set_a_numbers_minus_as_a_minus():
    """A negative difference was set with a hyphen, shorter than the minus of the numbers around it."""
    import collections

    from bench.report.tables import latex_table

    table = pd.DataFrame({"Model": ["unet-2 (lr=-1)"], "Diff": ["-0.12"], "CI": ["[-1.50, 2.00]"], "Folds": ["0-4"]})
    tex = latex_table("T", "note", "t", table, "lrrr", collections.Counter())
    assert "unet-2 (lr=-1) & $-$0.12 & [$-$1.50, 2.00] & 0-4 \\\\" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex (TeX Live) to compile the table")
def test_latex_report_compiles(tmp_path):
    """What users paste into a paper must compile: every LaTeX special character in a label, Latin-1
    text, boards of several policies, as one document with the packages the header names."""
    write_record(make_record("unet", seed=0, model_config={"norm": "#$%&~_^\\{}|<>\"x"}), tmp_path)
    write_record(make_record("unet", seed=1, model_config={"norm": "Überprüfung"}), tmp_path)
    write_record(make_record("vmunet", dataset="isic17"), tmp_path)
    (tmp_path / "tables.tex").write_text(render(load(tmp_path), "latex"), encoding="utf-8")
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
                                      "\\usepackage{graphicx}\\begin{document}\\input{tables}\\end{document}\n",
                                      encoding="utf-8")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_hd95_column_stays_where_the_policy_computes_it(tmp_path):
    write_record(make_record("unet", hd95=math.nan), tmp_path / "a")
    assert "HD95" in render(load(tmp_path / "a")).split("| Model", 1)[1].splitlines()[0]
    write_record(make_record("unet", dataset="isic17"), tmp_path / "b")  # legacy-isic computes none
    assert "HD95" not in render(load(tmp_path / "b")).split("| Model", 1)[1].splitlines()[0]


def test_csv_is_numeric_and_tidy(runs):
    import io

    table = pd.read_csv(io.StringIO(render(runs, "csv")))
    assert list(table.columns[:9]) == ["dataset", "protocol", "protocol_version", "protocol_hash", "protocol_builtin",
                                       "policy", "hd95_unit", "code", "model"]
    assert table["protocol_builtin"].isna().all()  # the built-ins as they are: empty
    assert set(table["code"]) == {runs["git_commit"].iloc[0]}  # the bench version the numbers came from
    assert len(table) == 4
    row = table[(table["protocol"] == "synapse") & (table["model"] == "vmunet")].iloc[0]
    assert row["dice_mean"] == pytest.approx(0.82) and row["dice_std"] == pytest.approx(0.02)
    assert row["n_seeds"] == 3


def test_empty_and_bad_format(tmp_path):
    empty = load(tmp_path)
    assert leaderboards(empty) == {}
    assert "No finished runs" in render(empty)
    assert render(empty, "csv").startswith("dataset,protocol")
    with pytest.raises(BenchError, match="md, latex, csv, cases"):
        render(empty, "html")
    with pytest.raises(BenchError, match="needs the records' case rows"):
        render(empty, "cases")
    said = f"{tmp_path}: no finished runs; pass the --results folder that `bench run` wrote"
    # the command's error in every format, to a file or not: the line printed (exit 0) was a report of
    # nothing in `bench report > table.md`, and a .tex holding it; "all" filters nothing
    for fmt, name in (("md", "r.md"), ("latex", "r.tex"), ("csv", "r.csv"), ("cases", "c.csv"), ("methods", "m.md")):
        for out in (None, tmp_path / "out" / name):
            with pytest.raises(BenchError, match=f"^{re.escape(said)}$"):
                write_report(tmp_path, fmt, out=out, models="all" if fmt == "methods" else None)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cases_format_is_every_row_behind_the_boards(tmp_path):
    import io

    for seed in (0, 1):
        write_record(make_record("vmunet", seed=seed), tmp_path)
    write_record(make_record("vmunet", seed=0, overrides={"epochs": 2}), tmp_path)
    text = write_report(tmp_path, "cases", out=tmp_path / "cases.csv")
    assert (tmp_path / "cases.csv").read_text(encoding="utf-8") == text
    table = pd.read_csv(io.StringIO(text))
    cases = load(tmp_path, level="case")
    assert len(table) == len(cases) and list(table.columns[:3]) == ["board_dataset", "board_protocol", "model_label"]
    assert set(table.columns) >= {"run_id", "seed", "case", "class", "name", "dice", "hd95", "tp", "fp", "fn"}
    merged = table.merge(cases, on=["run_id", "case", "class"], suffixes=("", "_rec"))
    assert len(merged) == len(cases) and (merged["dice"] == merged["dice_rec"]).all()
    # the off-protocol run is labelled apart, as on the boards
    assert set(table["board_protocol"]) == {"synapse", "synapse (off-protocol: epochs=2)"}

def test_synthetic_and_model_config_are_separated(tmp_path):
    write_record(make_record("unet", seed=0, dice=0.7), tmp_path)
    write_record(make_record("unet", seed=0, dice=0.5, synthetic=True), tmp_path)
    write_record(make_record("unet", seed=1, dice=0.6, model_config={"base_c": 8}), tmp_path)
    # only the keys that differ name a row; keys shared by all configs stay out of the label
    write_record(make_record("unet", dataset="acdc", seed=0, model_config={"base_c": 8, "depth": 4}), tmp_path)
    write_record(make_record("unet", dataset="acdc", seed=1, model_config={"base_c": 16, "depth": 4}), tmp_path)
    boards = leaderboards(load(tmp_path))
    assert ("synapse (synthetic)", "synapse", "legacy-synapse") in boards
    real = boards[("synapse", "synapse", "legacy-synapse")]
    assert sorted(real["model"]) == ["unet", "unet (base_c=8)"]
    assert (real["n_seeds"] == 1).all()
    acdc = boards[("acdc", "synapse", "legacy-synapse")]
    assert sorted(acdc["model"]) == ["unet (base_c=16)", "unet (base_c=8)"]
    # a run of the paper configuration keeps its plain label beside a variant: "vmunet (d_state=default)"
    # renamed the unchanged row whenever an ablation joined the folder (and a drift baseline lost it)
    write_record(make_record("vmunet", seed=0), tmp_path)
    write_record(make_record("vmunet", seed=1, model_config={"d_state": 16}), tmp_path)  # its paper value
    write_record(make_record("vmunet", seed=0, model_config={"d_state": 8}), tmp_path)
    real = leaderboards(load(tmp_path))[("synapse", "synapse", "legacy-synapse")]
    assert sorted(real["model"]) == ["unet", "unet (base_c=8)", "vmunet", "vmunet (d_state=8)"]
    assert real.set_index("model").loc["vmunet", "n_seeds"] == 2


def test_a_set_variant_is_named_even_alone_and_a_constructors_own_choice_is_not(tmp_path):
    """A --set d_state=8 run alone in its folder (or profiled alone) read "vmunet (tiny)", the label of
    the tiny model it is not; records and profiles keep the keys --set changed. A value the
    constructor chose itself (Swin-Unet's window for a small input) is in model_config too, and no one's change."""
    from bench.registry import changed_keys, get_entry
    from bench.report import profile_labels

    tiny = {k: list(v) for k, v in get_entry("vmunet").tiny.items()}
    assert changed_keys("vmunet", {**tiny, "d_state": 8}, tiny=True) == ["d_state"]
    assert changed_keys("vmunet", {**tiny, "d_state": 16}, tiny=True) == []  # the paper's value
    rec = make_record("vmunet", seed=0, model_config={**tiny, "d_state": 8, "img_size": 64})
    write_record({**rec, "tiny": True, "set_keys": ["d_state"]}, tmp_path)
    swin = make_record("swin_unet", seed=0, model_config={"img_size": 64, "window_size": 2})
    write_record({**swin, "set_keys": []}, tmp_path)
    board = leaderboards(load(tmp_path))[("synapse", "synapse", "legacy-synapse")]
    assert sorted(board["model"]) == ["swin_unet", "vmunet (tiny, d_state=8)"]
    alone = pd.DataFrame({"model": ["vmunet"], "tiny": [True], "set_keys": [["d_state"]],
                          "model_config": [{**tiny, "d_state": 8, "img_size": 64}]})
    assert profile_labels(alone) == ["vmunet (tiny, d_state=8)"]


def test_records_from_before_set_keys_join_todays_rows(tmp_path):
    """A review: yesterday's --set d_state=8 seed 0 (no set_keys) beside today's seed 1 made two rows, the
    old one read as the paper model; yesterday's tiny Swin-Unet (its window fitted to 64², in its
    model_config) must not read as a variant of today's."""
    from bench.registry import get_entry

    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in get_entry("swin_unet").tiny.items()}
    old = make_record("vmunet", seed=0, model_config={"d_state": 8})
    write_record(old, tmp_path)
    write_record({**make_record("vmunet", seed=1, model_config={"d_state": 8}), "set_keys": ["d_state"]}, tmp_path)
    write_record({**make_record("swin_unet", seed=0, model_config={**tiny, "window_size": 2}), "tiny": True}, tmp_path)
    write_record({**make_record("swin_unet", seed=1, model_config={**tiny, "window_size": 2}), "tiny": True,
                  "set_keys": []}, tmp_path)
    board = leaderboards(load(tmp_path))[("synapse", "synapse", "legacy-synapse")].set_index("model")
    assert sorted(board.index) == ["swin_unet (tiny)", "vmunet (d_state=8)"]
    assert (board["n_seeds"] == 2).all()


def test_tiny_configurations_are_labelled_whatever_shares_the_board(tmp_path):
    """--tiny runs read "(tiny)" on their own (they used to read as the paper's model), and a full
    run joining them leaves every label as it was; --reference names the model's one row."""
    from bench.registry import get_entry

    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in get_entry("unet").tiny.items()}
    assert tiny  # the registry's tiny UNet: widths (8, 16, 32, 64)
    for seed in range(2):
        for model, config, dice in (("unet", tiny, 0.6), ("vmunet", {}, 0.7)):
            rec = make_record(model, seed=seed, dice=dice, n_cases=6, model_config={"img_size": 64, **config})
            for row in rec["per_case"]:
                recount(row, rec["policy"], dice=dice + 0.02 * int(row["case"][-4:]) + 0.01 * seed)
            write_record(restate(rec), tmp_path)
    key = ("synapse", "synapse", "legacy-synapse")
    assert sorted(leaderboards(load(tmp_path))[key]["model"]) == ["unet (tiny)", "vmunet"]
    sig = write_report(tmp_path, reference="unet")
    assert "Reference: unet (tiny). Two-sided" in sig  # "unet" stands for its only row on the board
    published = write_report(tmp_path, published=True).split("## Published vs ours")[1]
    unet_rows = [line for line in published.splitlines() if line.startswith("| unet")]
    assert unet_rows and all(line.startswith("| unet (tiny) ") for line in unet_rows)  # the board's label
    write_record(make_record("unet", seed=0, dice=0.8, model_config={"img_size": 64}), tmp_path)
    write_record(make_record("unet", seed=1, dice=0.5, model_config={"img_size": 96, **tiny}), tmp_path)
    assert sorted(leaderboards(load(tmp_path))[key]["model"]) == [
        "unet", "unet (tiny, img_size=64)", "unet (tiny, img_size=96)", "vmunet"]
    # a config that only shares some tiny keys is not tiny
    half = {"widths": tiny["widths"][:3]}
    write_record(make_record("unet", dataset="acdc", seed=0, model_config=half), tmp_path)
    assert list(leaderboards(load(tmp_path))[("acdc", "synapse", "legacy-synapse")]["model"]) == [
        "unet (widths=[8, 16, 32])"]  # alone on its board, not the paper's model either (it read "unet")
    # the same config built with --tiny (the record says so) and a tiny key set otherwise: neither the
    # tiny nor the paper model, even alone on its board (it read "unet", the paper's label)
    write_record({**make_record("unet", dataset="acdc", seed=0, model_config=half, run_id="t"), "tiny": True},
                 tmp_path / "flag")
    assert list(leaderboards(load(tmp_path / "flag"))[("acdc", "synapse", "legacy-synapse")]["model"]) == [
        "unet (tiny, widths=[8, 16, 32])"]
    # the tiny configuration given by hand (--set) is the tiny model too, flag or not
    by_hand = {"img_size": 64, **tiny}
    write_record({**make_record("unet", dataset="acdc", seed=0, model_config=by_hand, run_id="h"), "tiny": False},
                 tmp_path / "hand")
    assert list(leaderboards(load(tmp_path / "hand"))[("acdc", "synapse", "legacy-synapse")]["model"]) == ["unet (tiny)"]


def test_evaluated_weights_have_a_row_of_their_own_that_leaves_the_trained_rows_alone(tmp_path):
    trained = make_record("vmunet", seed=0, run_id="trained")
    trained["init"] = {"source": "vmamba", "file": "vmamba_small_e238_ema.pth", "sha256": "ab" * 8}
    given = {**make_record("vmunet", seed=0, dice=0.7, run_id="given"), "init": None,
             "weights": {"file": "vmunet_synapse.pth", "sha256": "cd" * 8}}
    for rec in (trained, given):
        write_record(rec, tmp_path)
    board = leaderboards(load(tmp_path))[("synapse", "synapse", "legacy-synapse")]
    # not "(from scratch, weights …)" beside "(init …)": the evaluated weights started from nothing here
    assert sorted(board["model"]) == ["vmunet", "vmunet (weights vmunet_synapse.pth@cdcdcdcd)"]
    # a given file is scored once, of no training seed: its Seeds cell read "1" beside the trained row's
    seeds = {r["Model"]: r["Seeds"] for r in md_rows(write_report(tmp_path), "Model")}
    assert seeds == {"vmunet": "1", "vmunet (weights vmunet_synapse.pth@cdcdcdcd)": "— (given weights)"}


def test_a_board_mixing_pretrained_and_scratch_rows_says_which_is_which(tmp_path):
    """A fairness review: the papers' protocols start VM-UNet from ImageNet weights and U-Net from scratch,
    and no board but the Methods text said so: the rows read as an architecture comparison."""
    import csv
    import io

    pretrained = make_record("vmunet", seed=0, run_id="pre")
    pretrained["init"] = {"source": "vmamba", "file": "vmamba_small_e238_ema.pth", "sha256": "ab" * 8}
    for rec in (pretrained, make_record("unet", seed=0, run_id="bare")):
        write_record(rec, tmp_path / "mixed")
    for columns in (None, "paper"):
        text = write_report(tmp_path / "mixed", columns=columns)
        header = next(line for line in text.splitlines() if line.startswith("| Model"))
        assert [c.strip() for c in header.split("|")[1:4] if c.strip() != "Family"][:2] == ["Model", "Init"], header
        assert re.search(r"\| vmunet +(\| cnn|\| ssm)? *\| vmamba_small_e238_ema\.pth +\|", text), text
        assert re.search(r"\| unet +(\| cnn +)?\| scratch +\|", text), text
    rows = {r["model"]: r["init"] for r in csv.DictReader(io.StringIO(write_report(tmp_path / "mixed", "csv")))}
    assert rows == {"vmunet": "vmamba_small_e238_ema.pth@abababab", "unet": "scratch"}  # the file's hash too
    assert "| Init" in write_report(tmp_path / "mixed", columns="metrics")  # it goes with the numbers
    assert "| Init" not in write_report(tmp_path / "mixed", columns="family,params")
    write_record(make_record("unet", seed=0, run_id="only"), tmp_path / "bare")  # all from scratch: no column
    assert "| Init" not in write_report(tmp_path / "bare")


def test_write_report_atomic(tmp_path, runs):
    out = tmp_path / "report" / "board.md"
    text = write_report(tmp_path, "md", out=out)
    assert out.read_text(encoding="utf-8") == text and "82.00 ± 2.00" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["board.md", "board_files"]  # no temp files
    assert not [p for p in (out.parent / "board_files").iterdir() if p.suffix != ".png"]


def test_published_vs_ours_table(tmp_path):
    from bench.protocol import load_protocol

    synapse, synapse_v = load_protocol("synapse").hash, load_protocol("synapse").version  # the built-in as it is now
    for seed, d in enumerate([0.80, 0.82]):
        rec = make_record("vmunet", seed=seed, dice=d, hd95=18.0 + 2 * seed, case_ids=TRANSUNET_TEST_CASES)
        rec["protocol"]["hash"] = synapse
        write_record(rec, tmp_path)
    pub = tmp_path / "pub.csv"
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   "Paper A Table 2,vmunet,synapse,dice,81.08,%,legacy-synapse,synapse,\n"
                   "Paper A Table 2,vmunet,synapse,hd95,19.21,mm,legacy-synapse,synapse,\n"
                   "Paper B Table 3,vmunet,synapse,dice,82.00,%,legacy-synapse,synapse_vmunet,own recipe\n"
                   "Paper A Table 2,unet,synapse,dice,76.85,%,legacy-synapse,synapse,\n"
                   "Paper A Table 1,vmunet,isic17,dice,89.03,%,legacy-isic,isic17,\n", encoding="utf-8")
    text = write_report(tmp_path, published=pub)
    assert "No published numbers" not in text
    own = make_record("unet", dataset="nnunet")
    write_record({**own, "dataset_name": "nnunet:Dataset501_MyXray"}, tmp_path / "own")
    # a board of the user's own data: said, where the section was left out without a word
    write_record(make_record("transunet", seed=0), tmp_path / "own")  # data in the table, but not this model
    # the pooled board is compared through its per-test-set boards: only those are named
    write_record(make_record("unet", dataset="polyp", protocol="polyp", case_ids=["Kvasir/1", "Kvasir/2"]),
                 tmp_path / "poly")
    assert "No published numbers for polyp:Kvasir (data no paper in it reports on)." in \
        write_report(tmp_path / "poly", published=pub)
    assert (f"## Published vs ours\n\nNo published numbers for nnunet:Dataset501_MyXray (data no paper in it reports "
            f"on); synapse (none for transunet). {pub} holds data isic17, synapse; --published-file takes your own "
            "table of its columns.") in write_report(tmp_path / "own", published=pub)
    section = text[text.index(f"## Published vs ours · synapse · protocol synapse v1 ({synapse}) · policy "
                              "legacy-synapse (ours)"):]
    lines = [line for line in section.splitlines() if line.startswith("| vmunet")]
    # ours: mean DSC (0.80 + 0.82) / 2 = 81.00 %, HD95 (18 + 20) / 2 = 19.00
    assert any("DSC" in line and "81.08" in line and "81.00" in line and "-0.08" in line for line in lines)
    assert any("HD95" in line and "19.21" in line and "19.00" in line and "-0.21" in line for line in lines)
    # a number trained under another recipe is shown, its gap is not
    other = next(line for line in lines if "82" in line)
    assert "synapse_vmunet" in other and "other recipe" in other and "+1" not in other and "own recipe" in other
    # published numbers as the papers print them (two decimals: "82.00", it read "82")
    assert "| 82.00 % " in other and "| 76.85" not in section
    assert len(lines) == 3  # no unet run, no isic board: their published rows have nothing to meet
    # the authors' weights scored as given (--weights) were trained elsewhere: only the evaluation need be the
    # paper's, and synapse_vmunet scores as synapse does, so Paper B's number gets its gap too
    given = make_record("vmunet", seed=0, dice=0.83, case_ids=TRANSUNET_TEST_CASES, run_id="given")
    given["protocol"]["hash"] = synapse
    write_record({**given, "weights": {"file": "vmunet_synapse.pth", "sha256": "ef" * 8}}, tmp_path / "given")
    rows = [line for line in write_report(tmp_path / "given", published=pub).splitlines()
            if line.startswith("| vmunet (weights vmunet_synapse.pth@efefefef)") and "DSC" in line]
    assert len(rows) == 2 and all("other recipe" not in r for r in rows) and any("+1.00" in r for r in rows)
    assert "Ours − published is given only where" in section
    assert "Published vs" not in write_report(tmp_path)  # only on request
    # runs of another version of the recipe (an older or edited protocol file), or a board under
    # another metric policy than the paper's: shown, without a gap
    old = make_record("vmunet", seed=0, dice=0.8, case_ids=TRANSUNET_TEST_CASES)
    old["protocol"].update(version=0, hash="a1b2c3d4e5f60718")  # an earlier synapse
    write_record(old, tmp_path / "old")
    assert "other protocol version" in write_report(tmp_path / "old", published=pub)
    copy = make_record("vmunet", seed=0, dice=0.8, case_ids=TRANSUNET_TEST_CASES)
    copy["protocol"].update(version=synapse_v, hash="a1b2c3d4e5f60718")  # synapse as it is not: a copy, edited
    write_record(copy, tmp_path / "copy")
    assert "modified protocol copy" in write_report(tmp_path / "copy", published=pub)
    strict = make_record("vmunet", seed=0, dice=0.8, case_ids=TRANSUNET_TEST_CASES)
    strict.update(policy="strict", run_id="strict-run")
    strict["protocol"]["hash"] = synapse
    write_record(strict, tmp_path / "strict")
    assert "other metric policy" in write_report(tmp_path / "strict", published=pub)
    # a row whose convention is not one of our policies is held to its protocol's policy
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                       "Paper C,vmunet,synapse,dice,81.08,%,unknown,synapse,\n", encoding="utf-8")
    assert "other metric policy" in write_report(tmp_path / "strict", published=unknown)
    assert "-0.08" in write_report(tmp_path, published=unknown)
    # test volumes that are not TransUNet's 12 (a list of one's own): shown, without a gap
    own = make_record("vmunet", seed=0, dice=0.8, case_ids=[*TRANSUNET_TEST_CASES[:11], "case0040"])
    own["protocol"]["hash"] = synapse
    write_record(own, tmp_path / "own")
    assert "other split (12 test volumes, 11 of TransUNet's 12)" in write_report(tmp_path / "own", published=pub)


def test_published_rows_join_by_the_exact_model_name(tmp_path):
    """Our unet row compared with transunet's, vmunet's and swin_unet's published numbers (their names contain
    "unet") would show gaps to other models."""
    write_record(make_record("unet", seed=0, dice=0.76), tmp_path)
    table = pd.DataFrame([("Paper A Table 2", "unet", 76.85), ("Paper T Table 1", "transunet", 77.48),
                          ("Paper V Table 2", "vmunet", 81.08), ("Paper S Table 1", "swin_unet", 79.13)],
                         columns=["source", "model", "value"])
    table = table.assign(dataset="synapse", metric="dice", unit="%", convention="legacy-synapse",
                         protocol="synapse", note="")
    pub = tmp_path / "pub.csv"
    table.to_csv(pub, index=False, columns=["source", "model", "dataset", "metric", "value", "unit", "convention",
                                            "protocol", "note"])
    text = write_report(tmp_path, published=pub)
    rows = md_rows(text[text.index("## Published vs ours"):], "Model")
    assert [r["Source"] for r in rows] == table.loc[table["model"] == "unet", "source"].tolist()


def test_profiles_join_the_accuracy_board(tmp_path):
    import json as _json

    write_record(make_record("vmunet", model_config={"img_size": 224}), tmp_path)
    write_record(make_record("unet", model_config={"img_size": 224}), tmp_path)
    prof = tmp_path / "profiles"
    prof.mkdir()
    row = {"model": "vmunet", "family": "ssm", "input_shape": "1x3x224x224", "macs": 5.2e9, "paper_macs": 3.16e9,
           "model_config": {"num_classes": 9, "in_chans": 3, "img_size": 224},
           "params": 27_430_000, "paper_params": 22_000_000, "flops": 10.4e9, "scan_macs": 0.9e9,
           "paper_macs_missing_pct": 39.2, "fvcore_macs": 5.25e9, "fingerprint": "cpu x1", "precision": "fp32",
           "channels_last": False, "compiled": False, "scan_backend": "ref", "latency_ms_median": 100.0,
           "latency_ms_p90": 110.0, "fps": 10.0, "peak_mem_mb": 300.0, "train_peak_mem_mb": 900.0, "peak_mem_kind": "cpu_tensors"}
    (prof / "vmunet-1.json").write_text(_json.dumps(row), encoding="utf-8")
    text = write_report(tmp_path)
    board = text[: text.index("## Cost")]
    vm = next(line for line in board.splitlines() if line.startswith("| vmunet"))
    un = next(line for line in board.splitlines() if line.startswith("| unet"))
    assert "5.20" in vm and "3.16" in vm and "5.20" not in un
    cost = text[text.index("## Cost · input 1x3x224x224 · fp32 · cpu x1"):]
    (row,) = md_rows(cost, "model")
    # the profile output's column names, as CSV and JSON have them; the cells carry their units
    assert row == {"model": "vmunet", "family": "ssm", "params": "27.43 M", "paper_params": "22.00 M",
                   "input_shape": "1x3x224x224", "num_classes": "9",  # the board's runs may have another head
                   "macs": "5.20 G", "scan_macs": "0.9000 G", "paper_macs": "3.16 G",
                   "paper_macs_missing_pct": "39.2", "flops": "10.40 G", "fvcore_macs": "5.25 G",
                   "latency_ms_median": "100.00 (ref scan)",  # a reference scan backend's timing is marked
                   "latency_ms_p90": "110.00", "fps": "10.0 (ref scan)", "peak_mem_mb": "300 (cpu_tensors)",
                   "train_peak_mem_mb": "900", "fingerprint": "cpu x1"}


# one profile row (bench.profiles' columns): an SSM model at 224², timed at batch 1 in fp32
_PROFILE_ROW = {"family": "ssm", "input_shape": "1x3x224x224", "macs": 5e9, "paper_macs": 3e9, "params": 1e6,
                "paper_params": 1e6, "scan_macs": 1e9, "paper_macs_missing_pct": 40.0, "fvcore_macs": 5e9,
                "precision": "fp32", "channels_last": False, "compiled": False, "latency_ms_median": 10.0,
                "latency_ms_p90": 11.0, "fps": 100.0}


def test_cost_table_shows_throughput_where_measured():
    from bench.report import cost_tables

    base = _PROFILE_ROW
    rows = [{**base, "model": "vmunet", "fingerprint": "gpu", "scan_backend": "torch", "throughput_batch": 64,
             "throughput_fps": 812.5, "flops": 1e10},  # the others' (older profiles) NaN: 2 × macs
            {**base, "model": "unet", "fingerprint": "gpu", "scan_backend": None},  # batch 1 only
            {**base, "model": "vmunet", "fingerprint": "cpu x1", "scan_backend": "cpu"}]
    tables = cost_tables(pd.DataFrame(rows))
    gpu = tables["Cost · input 1x3x224x224 · fp32 · gpu"]
    assert list(gpu.columns).index("throughput_fps") == list(gpu.columns).index("fps") + 1
    assert dict(zip(gpu["model"], gpu["throughput_fps"])) == {"vmunet": "812.5 @ batch 64 (torch scan)", "unet": ""}
    # every timing column says the scan was a fallback, batch 1 included
    assert dict(zip(gpu["model"], gpu["fps"])) == {"vmunet": "100.0 (torch scan)", "unet": "100.0"}
    assert dict(zip(gpu["model"], gpu["latency_ms_median"])) == {"vmunet": "10.00 (torch scan)", "unet": "10.00"}
    assert dict(zip(gpu["model"], gpu["flops"])) == {"vmunet": "10.00 G", "unet": "10.00 G"}  # 2 × macs
    assert "throughput_fps" not in tables["Cost · input 1x3x224x224 · fp32 · cpu x1"].columns


def test_timings_at_another_precision_or_layout_are_another_cost_table():
    """An fp16 forward beside an fp32 one (or a channels_last beside a plain one) is not the faster model:
    a cost table ranks timings taken the same way only."""
    from bench.report import cost_tables

    base = {**_PROFILE_ROW, "fingerprint": "gpu", "scan_backend": None}
    rows = [{**base, "model": "vmunet", "precision": "fp16", "latency_ms_median": 5.0},
            {**base, "model": "unet"},
            {**base, "model": "transunet", "channels_last": True, "latency_ms_median": 9.0}]
    tables = cost_tables(pd.DataFrame(rows))
    assert {title: list(t["model"]) for title, t in tables.items()} == {
        "Cost · input 1x3x224x224 · fp16 · gpu": ["vmunet"], "Cost · input 1x3x224x224 · fp32 · gpu": ["unet"],
        "Cost · input 1x3x224x224 · fp32 · channels_last · gpu": ["transunet"]}


def test_a_noisy_latency_is_marked_and_the_timed_forwards_counted():
    """A review: latencies timed on a busy machine (p90 2.7× the median) sat in the cost table as any
    other, and the table never said how many forwards were timed."""
    from bench.report import cost_tables, render_cost_latex, render_cost_md

    base = {"family": "cnn", "input_shape": "1x3x64x64", "macs": 5e7, "paper_macs": 5e7, "params": 1e5,
            "paper_params": 1e5, "scan_macs": 0.0, "paper_macs_missing_pct": 0.0, "fvcore_macs": 5e7,
            "precision": "fp32", "channels_last": False, "compiled": False, "fingerprint": "cpu x2",
            "scan_backend": None, "timed_iters": 5, "fps": 3.1}
    rows = [{**base, "model": "unet", "latency_ms_median": 324.0, "latency_ms_p90": 865.0},  # 2.67×
            {**base, "model": "transunet", "latency_ms_median": 100.0, "latency_ms_p90": 200.0}]  # 2× exactly: not
    (table,) = cost_tables(pd.DataFrame(rows)).values()
    assert dict(zip(table["model"], table["latency_ms_median"])) == {"unet": "324.00 (noisy)", "transunet": "100.00"}
    assert list(table["timed_iters"]) == ["5", "5"]
    noisy = "\"(noisy)\": the p90 latency is over 2× the median"
    assert noisy in render_cost_md(pd.DataFrame(rows)) and "timed_iters: how many were timed" in render_cost_md(
        pd.DataFrame(rows))
    paper = render_cost_latex(pd.DataFrame(rows), paper=True)
    assert "Timed forwards per model: 5." in paper and "324.00 (noisy)" in paper
    assert "over 2$\\times$ the median" in paper
    quiet = [{**r, "latency_ms_p90": r["latency_ms_median"] * 1.2} for r in rows]
    assert "noisy" not in render_cost_md(pd.DataFrame(quiet))


def test_cost_rows_of_one_model_in_several_configurations_are_told_apart():
    from bench.report import cost_tables

    base = {"model": "unet", "family": "cnn", "input_shape": "1x3x32x32", "paper_params": 1e6, "scan_macs": 0.0,
            "paper_macs": 1e9, "paper_macs_missing_pct": 0.0, "fvcore_macs": 1e9, "precision": "fp32",
            "channels_last": False, "compiled": False, "fingerprint": "cpu x1", "scan_backend": None}
    rows = [{**base, "params": 34.5e6, "macs": 1e9, "model_config": {"img_size": 32, "num_classes": 9}},
            {**base, "params": 0.14e6, "macs": 1e7, "model_config": {"img_size": 32, "num_classes": 9, "base_c": 8}},
            {**base, "model": "vmunet", "family": "ssm", "params": 27e6, "macs": 2e9, "model_config": {"img_size": 32}}]
    (table,) = cost_tables(pd.DataFrame(rows)).values()
    assert sorted(table["model"]) == ["unet", "unet (base_c=8)", "vmunet"]
    # bench profile --tiny: the tiny model is called so, also alone in its table
    tiny = {"img_size": 32, "num_classes": 9, "widths": [8, 16, 32, 64]}
    (table,) = cost_tables(pd.DataFrame([{**rows[0], "model_config": tiny}, rows[2]])).values()
    assert sorted(table["model"]) == ["unet (tiny)", "vmunet"]


def test_ci_column_and_significance_section(tmp_path):
    from bench import stats

    # per-case values that differ: case i of unet's seed s gets dice 0.70 + 0.02 i + 0.01 s
    for model, base in (("unet", 0.70), ("vmunet", 0.74)):
        for seed in range(2):
            rec = make_record(model, seed=seed, dice=base, n_cases=6)
            for row in rec["per_case"]:
                recount(row, rec["policy"], dice=base + 0.02 * int(row["case"][-4:]) + 0.01 * seed)
            write_record(restate(rec), tmp_path)
    text = write_report(tmp_path, reference="unet")
    # the board's cases taken here, not through the report's grouping: one board, labels = model names
    group = load(tmp_path, level="case").assign(model_label=lambda d: d["model"])
    lo, hi = stats.bootstrap_ci(group, "dice", "legacy-synapse")["vmunet"]
    vm = next(line for line in text.splitlines() if line.startswith("| vmunet"))
    assert f"[{100 * lo:.2f}, {100 * hi:.2f}]" in vm and "95% CI: percentile bootstrap" in text
    # HD95's CI in mm, as its mean (×100 it said 2000 mm): every case's HD95 is 20, so is every resample's mean
    cells = next(r for r in md_rows(text, "Model") if r["Model"] == "vmunet")
    assert [v for k, v in cells.items() if k.startswith("HD95 95% CI")] == ["[20.00, 20.00]"]
    sig = text[text.index(f"## Significance · synapse · protocol synapse v1 ({load_protocol('synapse').hash}) · policy "
                          "legacy-synapse"):]
    expected = stats.paired_tests(group, "unet", metrics=("dice",)).iloc[0]
    row = next(line for line in sig.splitlines() if line.startswith("| vmunet") and "DSC" in line)
    assert f"{100 * expected['mean_diff']:+.2f}" in row and f"{expected['p_holm']:.3g}" in row
    assert "P(rank 1)" in sig and "Caution: under legacy-synapse a missed organ scores HD95 0" in sig
    assert "Tied models share the better rank, so P(rank 1) can add up to more than 1." in sig
    assert "Significance" not in write_report(tmp_path)
    write_record(make_record("swin_unet", dataset="isic17"), tmp_path)  # on another board only
    absent = write_report(tmp_path, reference="swin_unet")
    absent = absent[absent.index("## Significance · synapse"):]
    assert "'swin_unet' has no runs on this board" in absent and "P(rank 1)" in absent  # the ranks stand alone


def test_significance_and_published_tables_come_in_latex_too(tmp_path):
    """A paper's tables: --reference and --published were Markdown only, retyped into LaTeX by hand."""
    for model, base in (("unet", 0.70), ("vmunet", 0.74)):
        rec = make_record(model, seed=0, dice=base, n_cases=6)
        for row in rec["per_case"]:
            recount(row, rec["policy"], dice=base + 0.02 * int(row["case"][-4:]))
        write_record(restate(rec), tmp_path)
    pub = tmp_path / "pub.csv"
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   "Paper A Table 2,vmunet,synapse,dice,81.08,%,legacy-synapse,synapse,\n", encoding="utf-8")
    md = write_report(tmp_path, reference="unet", published=pub)
    tex = write_report(tmp_path, "latex", reference="unet", published=pub)
    captions = re.findall(r"\\caption\[\{([^}]*)\}\]", tex)
    assert [c.split(" $\\cdot$ ")[0] for c in captions] == ["synapse", "Paired tests", "Rank stability",
                                                             "Published vs ours"]
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert len(set(labels)) == 4  # each table its own label, a short one
    assert labels[-1] == "tab:published-synapse-protocol-synapse-v1-policy-legacy-synapse"
    # the same numbers as the Markdown sections: the tests' row, the ranks' rows, the published row
    sig = md[md.index("## Significance"):]
    for line in (next(l for l in sig.splitlines() if l.startswith("| vmunet") and "DSC" in l),
                 next(l for l in sig.splitlines() if l.startswith("| vmunet") and "DSC" not in l)):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert " & ".join(c.replace("−", "$-$").replace("–", "--") for c in cells) + " \\\\" in tex
    assert "81.08 \\%" in tex and "Paper A Table 2" in tex
    tests_caption = tex[tex.index("Paired tests"):tex.index("\\label{tab:significance")]
    assert "Wilcoxon" in tests_caption and "Tied models" not in tests_caption  # the rank note goes with the ranks
    assert "Tied models share the better rank" in tex[tex.index("Rank stability"):]


def _per_case_dice_runs(tmp_path, per_model: dict[str, list[float]]) -> None:
    """One legacy-synapse run per model whose case i has dice per_model[model][i] in every class."""
    for model, dices in per_model.items():
        rec = make_record(model, n_cases=len(dices))
        for row in rec["per_case"]:
            recount(row, rec["policy"], dice=dices[int(row["case"][-4:])])
        write_record(restate(rec), tmp_path)


def test_the_holm_column_is_the_holm_adjusted_p(tmp_path):
    """Guards against the "p (Holm)" column showing the raw, unadjusted p."""
    from bench import stats
    from bench.report.boards import METRICS

    ref = [0.70 + 0.02 * i for i in range(6)]
    _per_case_dice_runs(tmp_path, {
        "unet": ref,
        "vmunet": [d + 0.01 * (i + 1) for i, d in enumerate(ref)],  # better in every case
        "transunet": [d + e for d, e in zip(ref, (0.03, -0.01, 0.02, 0.04, -0.005, 0.05))],
    })
    rows = md_rows(write_report(tmp_path, reference="unet").split("## Significance")[1], "Model")
    group = load(tmp_path, level="case").assign(model_label=lambda d: d["model"])
    raw = stats.paired_tests(group, "unet", metrics=("dice", "hd95"), policy="legacy-synapse")
    # Holm by hand: the k-th smallest of m p-values times (m - k), running maximum, capped at 1
    expected, running = {}, 0.0
    ordered = raw.sort_values("p", kind="stable")
    for k, (model, metric, p) in enumerate(zip(ordered["model"], ordered["metric"], ordered["p"])):
        running = max(running, min(1.0, (len(raw) - k) * p))
        expected[(model, METRICS[metric][0])] = f"{running:.3g}"
    assert {(r["Model"], r["Metric"]): r["p (Holm)"] for r in rows} == expected
    assert expected[("vmunet", "DSC")] == "0.125"  # every case better: exact p 2/2^6, times 4 tests
    assert any(r["p (Holm)"] != r["p (Wilcoxon)"] for r in rows)


def test_significance_tables_show_dsc_in_percent_and_hd95_in_its_unit(tmp_path):
    """The tests' and ranks' numbers read as the board's: DSC ×100, HD95 in mm (a HD95 difference ×100 said
    −2000 mm for −20, a rank table's DSC 0.80 beside the board's 80.00)."""
    for model, dice, hd95 in (("vmunet", 0.80, 10.0), ("unet", 0.70, 30.0)):
        write_record(make_record(model, dice=dice, hd95=hd95, n_cases=4), tmp_path)  # every case the same
    sig = write_report(tmp_path, reference="unet").split("## Significance")[1]
    diff = {r["Metric"]: r["Mean per-case diff (model − ref)"] for r in md_rows(sig, "Model")}  # the tests' table
    assert {m: float(v) for m, v in diff.items()} == {"DSC": pytest.approx(80.0 - 70.0), "HD95": 10.0 - 30.0}
    ranks = sig[sig.rindex("\n", 0, sig.index("| DSC (%)")):]
    assert {r["Model"]: r["DSC (%)"] for r in md_rows(ranks, "Model")} == {"vmunet": "80.00", "unet": "70.00"}


@pytest.mark.parametrize("n_cases, caution", [(5, True), (6, False)])
def test_the_few_cases_caution_is_where_no_p_can_reach_005(tmp_path, n_cases, caution):
    """Guards against the caution threshold off by a factor 2: the smallest two-sided Wilcoxon p of n
    cases is 2/2^n, 0.0625 at 5 cases (no p < 0.05 possible), 0.03125 at 6."""
    ref = [0.70 + 0.02 * i for i in range(n_cases)]
    _per_case_dice_runs(tmp_path, {"unet": ref, "vmunet": [d + 0.01 * (i + 1) for i, d in enumerate(ref)]})
    sig = write_report(tmp_path, reference="unet").split("## Significance")[1]
    text = f"Caution: with {n_cases} shared test cases the smallest p these tests can give is 2/2^{n_cases}"
    assert (text in sig) is caution


@pytest.mark.parametrize("n_cases, caution", [(9, True), (10, False)])
def test_a_bootstrap_ci_over_few_cases_and_a_test_over_few_seeds_say_so(tmp_path, n_cases, caution):
    """A review: with 3 test cases the percentile bootstrap has 10 distinct resamples, yet its CIs were
    shown as any others; the paired tests over one or two seeds lacked the rank table's "for these trained
    runs". Under 10 cases the caption cautions (stats.FEW_CI_CASES); under 3 seeds the tests' caption says so."""
    ref = [0.70 + 0.02 * i for i in range(n_cases)]
    _per_case_dice_runs(tmp_path, {"unet": ref, "vmunet": [d + 0.01 for d in ref]})
    text = write_report(tmp_path, reference="unet")
    board, sig = text.split("## Significance")
    distinct = math.comb(2 * n_cases - 1, n_cases)  # resamples of n cases with replacement, as multisets
    said = f"Caution: with {n_cases} test cases the bootstrap has {distinct} distinct resamples"
    assert (said in board) is caution and "95% CI: percentile bootstrap" in board
    assert "For these trained runs: with 1 seed per model (the fewest here), p counts the test cases" in sig
    for seed in (1, 2):  # two seeds each: still said; three: the caveat goes
        for model, dices in (("unet", ref), ("vmunet", [d + 0.01 for d in ref])):
            rec = make_record(model, seed=seed, n_cases=n_cases)
            for row in rec["per_case"]:
                recount(row, rec["policy"], dice=dices[int(row["case"][-4:])])
            write_record(restate(rec), tmp_path)
        if seed == 1:
            sig = write_report(tmp_path, reference="unet").split("## Significance")[1]
            assert "For these trained runs: with 2 seeds per model (the fewest here), p counts the test cases" in sig
    assert "For these trained runs" not in write_report(tmp_path, reference="unet").split("## Significance")[1]


def test_the_bootstrap_caution_counts_the_row_with_the_fewest_cases(tmp_path):
    """A board whose rows resample 12 and 4 cases: the 4-case row's CI is the coarse one the caution is for."""
    write_record(make_record("vmunet", n_cases=12), tmp_path)
    write_record(make_record("unet", n_cases=4), tmp_path)
    distinct = math.comb(2 * 4 - 1, 4)  # multisets of 4 drawn from 4: 35
    assert f"Caution: with 4 test cases the bootstrap has {distinct} distinct resamples" in write_report(tmp_path)


def test_significance_of_weights_only_evaluated_names_no_retrained_seed(tmp_path):
    """A review: a board of released weights only evaluated read "For these trained runs: with 1 seed per model
    ...: a retrained seed can compare otherwise" and "for these trained runs: a retrained seed can rank otherwise";
    those rows have no training seed here. On a board mixing them, the seeds are said of the trained rows."""
    for model, base in (("vmunet", 0.80), ("transunet", 0.75), ("swin_unet", 0.78)):
        rec = make_record(model, n_cases=12)
        for row in rec["per_case"]:
            recount(row, rec["policy"], dice=base + 0.01 * int(row["case"][-4:]))
        rec["weights"] = {"file": f"{model}.pth", "sha256": "ab" * 32, "trained_by": None}
        write_record(restate(rec), tmp_path)
    sig = write_report(tmp_path, reference="transunet").split("## Significance")[1]
    assert "trained runs" not in sig and "retrained seed" not in sig
    assert ("For these weights: one given file per model, trained elsewhere, so p compares these files on these "
            "cases, not the models' training: other weights can compare otherwise.") in sig
    assert "for these weights, each a given file evaluated once: other weights of these models can rank otherwise" in sig
    rec = make_record("unet", n_cases=12)  # one run trained here: its seeds are said of it
    for row in rec["per_case"]:
        recount(row, rec["policy"], dice=0.70 + 0.01 * int(row["case"][-4:]))
    write_record(restate(rec), tmp_path)
    sig = write_report(tmp_path, reference="transunet").split("## Significance")[1]
    assert "For the runs trained here: with 1 seed per model (the fewest here), p counts the test cases" in sig
    assert "For the weights only evaluated: one given file per model" in sig
    assert ("for these runs and weights: a retrained seed of the models trained here, or other weights of those only "
            "evaluated, can rank otherwise") in sig
    tex = write_report(tmp_path, "latex", reference="transunet")  # the rank note goes with the rank table
    ranks = tex[tex.index("Rank stability"):]
    assert "other weights of those only evaluated" in ranks
    assert "other weights of those only evaluated" not in tex[tex.index("Paired tests"):tex.index("Rank stability")]


def test_a_run_that_did_not_finish_feeds_no_statistic(tmp_path):
    """A record whose status is not "finished" is off the board, and so off its CI, paired tests,
    ranks and case rows (they took it in: a CI beside the board value that did not contain it)."""
    for model, dice in (("unet", 0.30), ("vmunet", 0.50)):
        for seed in range(2):
            rec = make_record(model, seed=seed, dice=dice, n_cases=4)
            for row in rec["per_case"]:
                recount(row, rec["policy"], dice=dice + 0.01 * int(row["case"][-4:]))
            write_record(restate(rec), tmp_path)
    clean = write_report(tmp_path, reference="unet")
    failed = make_record("unet", seed=2, dice=1.0, n_cases=4)
    failed["status"] = "failed"
    write_record(failed, tmp_path)
    assert write_report(tmp_path, reference="unet") == clean
    assert failed["run_id"] not in write_report(tmp_path, fmt="cases")


def test_a_pooled_board_tests_the_difference_it_shows(tmp_path):
    """legacy-isic: vmunet wins the pooled DSC (one large lesion), unet wins per image (five small
    ones); the section gives the board's own difference and a permutation test's p, no per-case test."""
    from bench import stats

    images = {"vmunet": [(990, 10, 10)] + [(5, 5, 5)] * 5, "unet": [(800, 200, 200)] + [(9, 1, 1)] * 5}
    for model, counts in images.items():
        rec = make_record(model, dataset="isic17", n_cases=6)
        for row, (tp, fp, fn) in zip(rec["per_case"], counts):
            recount(row, rec["policy"], tp=tp, fp=fp, fn=fn, tn=10)
        write_record(restate(rec), tmp_path)
    text = write_report(tmp_path, reference="unet")
    sig = text[text.index("## Significance · isic17"):]
    group = load(tmp_path, level="case").assign(model_label=lambda d: d["model"])
    board = stats.policy_statistic(group, "dice", "legacy-isic").iloc[0]
    assert board["vmunet"] > board["unet"] and stats.case_values(group).mean().idxmax() == "unet"
    head = next(line for line in sig.splitlines() if line.startswith("| Model"))
    assert "Diff of board values (model − ref)" in head and "p (permutation)" in head and "Effect" not in head
    row = next(line for line in sig.splitlines() if line.startswith("| vmunet") and "DSC" in line)
    assert f"{100 * (board['vmunet'] - board['unet']):+.2f}" in row
    assert "the test is a paired permutation test of the board's difference" in sig


def test_a_model_whose_board_dsc_is_nan_is_neither_tested_nor_silently_unranked(tmp_path):
    """strict: transunet's gallbladder is empty in both masks in every case, so its board DSC is nan
    (not a mean over the other organs). The paired test said +x beside it (per-case means over the
    other organs) and the rank table dropped it unsaid."""
    for model, dice in (("unet", 0.5), ("vmunet", 0.6), ("transunet", 0.7)):
        for seed in range(2):
            rec = make_record(model, seed=seed, dice=dice, n_cases=4)
            rec["policy"] = "strict"
            for i, row in enumerate(rec["per_case"]):
                recount(row, rec["policy"], dice=dice + 0.005 * i + 0.01 * seed)  # <= 1: a Dice
                if model == "transunet" and row["name"] == "gallbladder":
                    recount(row, "strict", tp=0, fp=0, fn=0)["hd95"] = None  # both masks empty
            if model == "transunet":
                rec["metrics"]["dice"] = None
            write_record(restate(rec), tmp_path)
    text = write_report(tmp_path, reference="unet")
    sig = text[text.index("## Significance"):]
    rows = md_rows(sig, "Model")
    tr = next(r for r in rows if r["Model"] == "transunet" and r["Metric"] == "DSC")
    vm = next(r for r in rows if r["Model"] == "vmunet" and r["Metric"] == "DSC")
    assert tr["Mean per-case diff (model − ref)"] == "" and tr["p (Wilcoxon)"] == ""
    assert vm["p (Wilcoxon)"] != "" and "nothing to test" in sig
    assert "Not ranked (DSC nan over the cases every model has): transunet." in sig


def test_a_metric_nan_in_every_run_is_shown_not_dropped(tmp_path):
    """strict, a declared class valid in no case (vessel): the runs' DSC, mIoU and the class's column
    are nan. The board dropped them (only HD95 was kept), beside a caption saying NaN is shown; and an
    nnU-Net board's classes keep their own names (Synapse's capitals were applied to 'liver')."""
    rec = make_record("lightm_unet", dataset="nnunet", protocol="lightm_unet_3d", classes=["liver", "tumour", "vessel"])
    rec["policy"] = "strict"
    for row in rec["per_case"]:
        if row["name"] == "vessel":
            recount(row, "strict", tp=0, fp=0, fn=0)["hd95"] = None  # both masks empty
    rec["per_class"][2].update(dice=None, iou=None, hd95=None, n_nan=2)
    rec["metrics"].update(dice=None, iou=None, sen=None, n_nan_dice=2, n_valid_dice=4, n_nan_sen=2, n_valid_sen=4)
    write_record(restate(rec), tmp_path)
    (row,) = md_rows(write_report(tmp_path), "Model")
    assert row["DSC ↑ (%)"] == "nan (1/1 runs)" and row["mIoU ↑ (%)"] == "nan (1/1 runs)"
    assert row["Sen ↑ (%)"] == "nan (1/1 runs)" and row["vessel"] == "nan (1/1 runs)"
    assert row["liver"] == "80.00" and "Liver" not in row
    csv = pd.read_csv(io.StringIO(write_report(tmp_path, fmt="csv")))
    assert {"dice_mean", "iou_mean", "dice/vessel_mean"} <= set(csv.columns) and csv["dice_mean"].isna().all()
    # beside a board whose records count none (legacy), its counts are still integers: "2", not "2.0"
    write_record(make_record("unet"), tmp_path)
    both = pd.read_csv(io.StringIO(write_report(tmp_path, fmt="csv")), dtype=str).set_index("policy")
    assert both.loc["strict", ["dice_n_na", "dice_n_entries"]].tolist() == ["2", "6"]


def test_strict_hd95_on_resized_images_says_whose_pixels(tmp_path):
    """ISIC/polyp images are resized to a square model input: strict's HD95 in "pixels" is in that
    grid's pixels, not the images' (a 60x80 image's miss scored the 64x64 diagonal)."""
    rec = make_record("unet", dataset="isic17", n_cases=2)
    rec.update(policy="strict", hd95_unit="pixels")
    rec["metrics"]["hd95"] = 12.0
    for row in rec["per_case"]:
        row["hd95"] = 12.0
    rec["per_class"][0]["hd95"] = 12.0
    write_record(restate(rec), tmp_path)
    assert "HD95 in pixels of the square model input (images are resized to it, so not the images' own pixels)" \
        in write_report(tmp_path)


def test_a_reference_run_in_several_configs_is_named_not_called_absent(tmp_path):
    """A model run in several configs on a board gets a row per config ("unet (base_c=8)"):
    --reference unet then names the labels to choose from; the ranks are shown either way."""
    for model, config, base in (("unet", {"base_c": 8}, 0.70), ("vmunet", {}, 0.74)):
        for seed in range(2):
            rec = make_record(model, seed=seed, dice=base, n_cases=6, model_config=config)
            for row in rec["per_case"]:
                recount(row, rec["policy"], dice=base + 0.02 * int(row["case"][-4:]) + 0.01 * seed)
            write_record(restate(rec), tmp_path)
    write_record(make_record("unet", dataset="acdc", protocol="acdc", classes=["rv"]), tmp_path)
    text = write_report(tmp_path, reference="unet")
    sig = text[text.index("## Significance · synapse"):]
    assert "Reference: unet. Two-sided" in sig  # one config of unet on this board: labelled "unet"
    assert next(line for line in sig.splitlines() if line.startswith("| vmunet") and "DSC" in line)
    assert "'unet' is the only model on this board" in text[text.index("## Significance · acdc"):]
    rec = make_record("unet", seed=0, dice=0.6, n_cases=6, model_config={"base_c": 16})
    write_record(restate(rec), tmp_path)
    sig = write_report(tmp_path, reference="unet")
    sig = sig[sig.index("## Significance · synapse"):]
    assert ("'unet' runs here in several configurations (unet (base_c=16), unet (base_c=8)); pass one as "
            "--reference") in sig and "P(rank 1)" in sig
    sig = write_report(tmp_path, reference="unet (base_c=8)")
    assert "Reference: unet (base_c=8). Two-sided" in sig


def test_markdown_report_file_links_its_plots(tmp_path):
    from urllib.parse import unquote

    results = tmp_path / "results"
    for model, d in (("unet", 0.7), ("vmunet", 0.8)):
        write_record(make_record(model, dice=d), results)
    out = tmp_path / "report" / "my report #2 100%.md"
    text = write_report(results, out=out)
    # percent-encoded: a space, '#' (a fragment) or '%' of the report's name broke the links (in <> too)
    links = re.findall(r"!\[[^\]]*\]\((my%20report%20%232%20100%25_files/[^)]+\.png)\)", text)
    assert links and all((out.parent / unquote(link)).stat().st_size > 0 for link in links)
    assert out.read_text(encoding="utf-8") == text
    assert "![" not in write_report(results)  # on stdout: no images


def test_caption_names_the_hd95_unit_the_records_carry(tmp_path):
    # records written before hd95_unit existed keep the generic wording
    write_record(make_record("unet", seed=0), tmp_path / "old")
    assert "HD95 in the policy's unit" in render(load(tmp_path / "old"))
    for seed, unit in enumerate(["mm", "mm"]):
        write_record({**make_record("unet", seed=seed), "hd95_unit": unit}, tmp_path / "mm")
    assert load(tmp_path / "mm")["hd95_unit"].tolist() == ["mm", "mm"]
    assert "HD95 in mm;" in render(load(tmp_path / "mm"))
    # a board mixing mm and voxel runs must not present one mean as either
    write_record({**make_record("unet", seed=0), "hd95_unit": "mm"}, tmp_path / "mix")
    write_record({**make_record("unet", seed=1), "hd95_unit": "voxels"}, tmp_path / "mix")
    assert "HD95 units differ between or within runs (mm, voxels): not comparable" in render(load(tmp_path / "mix"))
    # a pooled ISIC board has no HD95 column: its caption does not speak of one
    isic = {**make_record("unet", "isic17"), "hd95_unit": None}
    for rec in (isic, {k: v for k, v in isic.items() if k != "hd95_unit"}):
        shutil.rmtree(tmp_path / "isic", ignore_errors=True)
        write_record(rec, tmp_path / "isic")
        text = render(load(tmp_path / "isic"))
        assert "DSC, mIoU, Acc, Spe, Sen in %; NaN is shown" in text and "HD95" not in text, text


def test_caption_names_the_nsd_tolerances_the_records_carry(tmp_path):
    def rec(seed, **tol):
        base = make_record("unet", seed=seed)
        return {**base, "hd95_unit": "mm", "metrics": {**base["metrics"], "nsd": 0.9, **tol}}

    write_record(rec(0, nsd_tolerance=2.0), tmp_path / "one")
    assert "NSD: % of both surfaces within 2 mm of the other." in render(load(tmp_path / "one"))
    table = {"aorta": 1.0, "liver": 5.0, "spleen": 2.5}  # U-Mamba style: organ-specific
    for seed in (0, 1):
        write_record(rec(seed, nsd_tolerances=table), tmp_path / "table")
    runs = load(tmp_path / "table")
    assert runs["nsd_tolerances"].tolist() == ["aorta 1, liver 5, spleen 2.5"] * 2
    md = render(runs)
    assert "NSD: % of both surfaces within the class's tolerance of the other, in mm: aorta 1, liver 5, spleen 2.5." in md
    assert load(tmp_path / "one")["nsd_tolerances"].isna().all()  # a number for all: the nsd_tolerance column
    # --columns ci alone shows an NSD CI column: its tolerance is said too; --columns family shows no NSD
    for seed in (0, 1):
        with_cases = rec(seed, nsd_tolerance=2.0)
        for row in with_cases["per_case"]:
            row["nsd"] = 0.9
        write_record(with_cases, tmp_path / "ci")
    runs, cases = load(tmp_path / "ci"), load(tmp_path / "ci", level="case")
    assert "NSD 95% CI" in render(runs, "md", cases, columns=("ci",))
    assert "within 2 mm" in render(runs, "md", cases, columns=("ci",))
    assert "within 2 mm" not in render(runs, "md", cases, columns=("family",))


def test_two_nnunet_datasets_get_two_boards_and_their_published_rows(tmp_path):
    from bench.report import published_dataset

    for name, dice in (("nnunet:Dataset027_ACDC", 0.9), ("nnunet:LiTS", 0.6)):
        write_record({**make_record("unet", dataset="nnunet", dice=dice), "dataset_name": name}, tmp_path)
    boards = leaderboards(load(tmp_path))
    assert sorted(k.dataset for k in boards) == ["nnunet:Dataset027_ACDC", "nnunet:LiTS"]
    assert [b["dice_mean"].iloc[0] for b in boards.values()] == [pytest.approx(0.9), pytest.approx(0.6)]
    assert published_dataset("nnunet:Dataset027_ACDC") == "acdc"
    assert published_dataset("nnunet:Dataset801_LiverCT") == "lits"  # LightM-UNet's own dataset names
    assert published_dataset("nnunet:Dataset802_LungXray") == "montgomery_shenzhen"
    assert published_dataset("nnunet:LiTS (synthetic)") == "lits"
    assert published_dataset("synapse (synthetic)") == "synapse"
    # records written before dataset_name existed still make a board, under their dataset
    write_record(make_record("unet", dataset="synapse", seed=1), tmp_path / "old")
    assert [k.dataset for k in leaderboards(load(tmp_path / "old"))] == ["synapse"]


def test_published_per_class_numbers_meet_the_boards_per_class_columns(tmp_path):
    # results/published.csv's ~260 "dice:<organ>" rows were never shown
    from bench.protocol import load_protocol

    rec = make_record("vmunet", dice=0.8, class_dice={"aorta": 0.86, "liver": 0.95}, case_ids=TRANSUNET_TEST_CASES)
    rec["protocol"]["hash"] = load_protocol("synapse").hash
    write_record(rec, tmp_path)
    pub = tmp_path / "pub.csv"
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   "Paper A Table 2,vmunet,synapse,dice:aorta,86.40,%,legacy-synapse,synapse,\n"
                   "Paper A Table 2,vmunet,synapse,dice:liver,94.00,%,legacy-synapse,synapse,\n"
                   "Paper A Table 2,vmunet,synapse,params,27.4,M,unknown,,\n", encoding="utf-8")
    text = write_report(tmp_path, published=pub)
    lines = [line for line in text[text.index("## Published vs ours"):].splitlines() if line.startswith("| vmunet")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    got = {c[1]: (c[2], c[6], c[7]) for c in cells}  # Metric: Published, Ours, Ours − published
    # the board's organ names, and each number's unit
    # (§ : "Paper A" is not in the bundled table)
    assert got == {"DSC (Aorta)": ("86.40 % §", "86.00 %", "-0.40"), "DSC (Liver)": ("94.00 % §", "95.00 %", "+1.00")}
    # nnU-Net's ACDC names its classes RV, MLM, LVC; the papers' columns are rv, myo, lv
    from bench.report import _class_column

    acdc = pd.Series({"dice/RV_mean": 0.7, "dice/MLM_mean": 0.8, "dice/LVC_mean": 0.9, "dice_mean": 0.8})
    assert [_class_column(acdc, "dice", c) for c in ("rv", "myo", "lv", "la")] == \
        ["dice/RV_mean", "dice/MLM_mean", "dice/LVC_mean", None]


def _published_section(results, *rows: str) -> str:
    """The report's published-vs-ours sections for a published table of ``rows`` (CSV lines)."""
    pub = results / "pub.csv"
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   + "".join(f"{r}\n" for r in rows), encoding="utf-8")
    return write_report(results, published=pub).split("## Published vs ours")[1]


def test_a_run_of_the_papers_recipe_with_overrides_is_told_apart_from_another_recipe(tmp_path):
    # it read "other recipe" beside a "Their recipe" cell naming the board's own protocol, and only the
    # first reason was given: every reason is named now
    from bench.protocol import load_protocol

    rec = make_record("transunet", dice=0.8, overrides={"max_iterations": 3}, case_ids=TRANSUNET_TEST_CASES[:2])
    rec["protocol"]["hash"] = load_protocol("synapse").hash
    write_record(rec, tmp_path)
    section = _published_section(tmp_path, "TransUNet Table 1,transunet,synapse,dice,77.48,%,legacy-synapse,synapse,",
                                 "Other Table,transunet,synapse,dice,78.00,%,legacy-synapse,synapse_swin,")
    # "78.00", not "78": the footnote's path (pytest-1278) holds that too
    ours, other = (next(line for line in section.splitlines() if t in line) for t in ("77.48", "78.00"))
    assert "off-protocol (max_iterations=3); other split (2 test volumes, 2 of TransUNet's 12)" in ours, ours
    assert "other recipe" in other and "off-protocol" not in other, other


def test_a_number_two_papers_print_is_one_row_naming_both(tmp_path):
    """From a scale journey: VM-UNet-V2's Table 1 reprints VM-UNet's ISIC numbers, and each came twice."""
    write_record(make_record("transunet", dice=0.8, case_ids=TRANSUNET_TEST_CASES[:2]), tmp_path)
    section = _published_section(tmp_path, "TransUNet Table 1,transunet,synapse,dice,77.48,%,legacy-synapse,synapse,",
                                 "Later Table 2,transunet,synapse,dice,77.48,%,legacy-synapse,synapse,",
                                 "Other Table,transunet,synapse,dice,78.00,%,legacy-synapse,synapse,")
    rows = [line for line in section.splitlines() if line.startswith("| transunet")]
    cells = [[c.strip() for c in row.split("|")] for row in rows]
    assert [c[4] for c in cells] == ["TransUNet Table 1; Later Table 2", "Other Table"], rows


def test_split_mismatch_by_case_ids_counts_or_unpublished_splits():
    from bench.data.verify import PRANET_TEST_SETS, VMUNET_ISIC_SPLITS
    from bench.report import split_mismatch

    def cases(ids):
        return pd.DataFrame({"case": list(ids)})

    assert split_mismatch("synapse", cases(TRANSUNET_TEST_CASES)) is None
    assert split_mismatch("isic17", cases(f"ISIC_{i}" for i in range(VMUNET_ISIC_SPLITS["isic17"][1]))) is None
    assert split_mismatch("isic18", cases(range(650))) == "other split (650 test images, the paper's 808)"
    assert split_mismatch("polyp:kvasir", cases(f"Kvasir/{i}" for i in range(PRANET_TEST_SETS["Kvasir"]))) is None
    assert split_mismatch("polyp:etis", cases(range(99))) == "other split (99 test images, the paper's 196)"
    assert split_mismatch("acdc", cases(range(20))) == "other split (the paper's test cases are not published)"
    assert split_mismatch("synapse", None) == split_mismatch("synapse", cases([])) == \
        "test cases unknown (no per-case rows)"
    # the training set too, where runs recorded it: TransUNet's 2,211 slices, VM-UNet's 1500 / 1886 images
    # (VM-UNet-V2's merged ISIC: both), PraNet's 1450
    assert split_mismatch("synapse", cases(TRANSUNET_TEST_CASES), [2211]) is None
    assert split_mismatch("synapse", cases(TRANSUNET_TEST_CASES), [2211, 1800]) == \
        "other split (1800 training slices, the paper's 2211)"
    isic17 = cases(range(650))
    assert split_mismatch("isic17", isic17, [1500]) is None
    assert split_mismatch("isic17", isic17, [700]) == "other split (700 training images, the paper's 1500)"
    assert split_mismatch("isic_all:isic17", isic17, [3386]) is None
    assert split_mismatch("isic_all:isic17", isic17, [1500]) == "other split (1500 training images, the paper's 3386)"
    assert split_mismatch("polyp:Kvasir", cases(range(100)), [1450]) is None


def test_the_split_is_judged_per_model_row(tmp_path):
    """One model scored on other cases blocks its own gap, not the other models' on the board."""
    from bench.protocol import load_protocol

    synapse = load_protocol("synapse").hash
    for model, ids in (("vmunet", TRANSUNET_TEST_CASES), ("unet", [*TRANSUNET_TEST_CASES[:11], "case0040"])):
        rec = {**make_record(model, seed=0, dice=0.8, case_ids=ids), "n_train": 2211}
        rec["protocol"]["hash"] = synapse
        write_record(rec, tmp_path)
    section = _published_section(tmp_path, "Paper A,vmunet,synapse,dice,81.00,%,legacy-synapse,synapse,",
                                 "Paper A,unet,synapse,dice,76.00,%,legacy-synapse,synapse,")
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ") and "DSC" in line}
    assert "-1.00" in rows["vmunet"] and "other split (12 test volumes, 11 of TransUNet's 12)" in rows["unet"]


def test_report_of_some_models_and_datasets(tmp_path, runs):
    """--models / --dataset keep only those runs (their case rows and profiles too); a name no run
    has is one error listing the names there."""
    text = write_report(tmp_path, models=["unet"], datasets=["synapse"])
    assert "| unet " in text and "| vmunet " not in text and "isic17" not in text
    assert "## synapse · protocol synapse" in text and "off-protocol" not in text  # the off-protocol run is vmunet's
    cases = write_report(tmp_path, "cases", models=["vmunet"])
    assert set(pd.read_csv(io.StringIO(cases))["model_label"]) == {"vmunet"}
    with pytest.raises(BenchError, match=r"--models vmnet: no runs of it in .* \(there: unet, vmunet\) \(did you mean "
                                         "'vmunet'"):
        write_report(tmp_path, models=["vmnet"])
    with pytest.raises(BenchError, match=r"--dataset isic: no runs of it .*did you mean 'isic17'"):
        write_report(tmp_path, datasets=["isic"])
    with pytest.raises(BenchError, match=r"--models transunet: no runs of it in .* \(there: unet, vmunet\)$"):
        write_report(tmp_path, models=["transunet"])  # a model without runs here, not a misspelt 'unet'
    # a name in another case or Unicode form is that name (`--models UNET` was "no runs of it", no hint)
    assert write_report(tmp_path, models=["UNET"], datasets=["Synapse"]) == text
    assert "Significance" in write_report(tmp_path, models="UNET,vmunet", reference="Unet")  # "not among --models"
    with pytest.raises(BenchError, match=r"--reference 'unet': not among --models vmunet; add it there"):
        write_report(tmp_path, models=["vmunet"], reference="unet")
    (tmp_path / "report.md").write_text("x", encoding="utf-8")
    with pytest.raises(BenchError, match=r"report\.md: is a file, not a folder; --results takes the results folder"):
        write_report(tmp_path / "report.md")  # it read "results directory not found"
    (tmp_path / "records").rename(tmp_path / "kept")  # a folder of profiles only: their tables, said so
    from bench import cost, profiles

    profiles.write_profile(cost.profile_model("unet", img_size=32, tiny=True, timing=False), tmp_path)
    md = write_report(tmp_path)
    assert md.startswith(f"{tmp_path}: no finished runs; the cost tables of its `bench profile` records only.")
    assert "## Cost · input 1x3x32x32" in md and "latency_ms_median /" not in md  # untimed: no timing explained
    assert "## Cost · input 1x3x32x32" in write_report(tmp_path, models=["unet"])  # profiled: no "no runs of it"
    assert "## Cost · input 1x3x32x32" in write_report(tmp_path, models=["Unet"])  # its cost table kept
    assert "## Cost" not in write_report(tmp_path, columns=("metrics",))  # --columns without cost, as in LaTeX


def test_the_caption_names_the_training_items_where_runs_recorded_them(tmp_path):
    write_record({**make_record("unet", seed=0), "n_train": 2211}, tmp_path)
    write_record({**make_record("unet", seed=1), "n_train": 2211}, tmp_path)
    assert "test cases per run: 2; training items: 2211. DSC" in write_report(tmp_path)
    write_record(make_record("unet", dataset="isic17", seed=0), tmp_path / "old")  # recorded before n_train
    assert "test cases per run: 2. DSC" in write_report(tmp_path / "old")


def test_lightm_unets_chest_xray_number_meets_a_lightm_unet_2d_board(tmp_path):
    """The built-in published.csv: LightM-UNet's Montgomery & Shenzhen Dice (96.17, nnU-Net's per-case
    means) meets a board of its recipe (lightm_unet_2d, strict) over their Dataset802_LungXray, beside
    ours, without a gap: the paper's 7:1:2 split is not published, so no run here tests its cases."""
    from bench.protocol import load_protocol

    rec = make_record("lightm_unet", dataset="nnunet", dice=0.95, protocol="lightm_unet_2d", classes=["lung"])
    rec.update(dataset_name="nnunet:Dataset802_LungXray", policy="strict")
    rec["protocol"]["hash"] = load_protocol("lightm_unet_2d").hash
    write_record(rec, tmp_path)
    section = write_report(tmp_path, published=True).split("## Published vs ours · nnunet:Dataset802_LungXray")[1]
    dice = next(line for line in section.splitlines() if line.startswith("| lightm_unet") and "96.17" in line)
    assert "lightm_unet_2d" in dice and "95.00" in dice and "-1.17" not in dice
    assert "other split (the paper's test cases are not published)" in dice


def test_lightm_unets_lits_number_meets_a_lightm_unet_3d_board(tmp_path):
    """A lightm_unet_3d run builds the volumetric variant (spatial_dims 3 in its model_config): that is
    the model as registered under this protocol, so LiTS's published Dice is held back only by the
    unpublished split; a 2-D build recorded under the same protocol is another model config."""
    from bench.protocol import load_protocol

    rec = make_record("lightm_unet", dataset="nnunet", dice=0.80, protocol="lightm_unet_3d",
                      classes=["liver", "tumor"], model_config={"num_classes": 3, "in_chans": 1, "img_size": 128,
                                                                "spatial_dims": 3})
    rec.update(dataset_name="nnunet:Dataset801_LiverCT", policy="strict")
    rec["protocol"]["hash"] = load_protocol("lightm_unet_3d").hash
    write_record(rec, tmp_path)
    section = write_report(tmp_path, published=True).split("## Published vs ours · nnunet:Dataset801_LiverCT")[1]
    dice = next(line for line in section.splitlines() if line.startswith("| lightm_unet | DSC"))
    assert "84.60 " in dice and "lightm_unet_3d" in dice and "80.00" in dice and "-4.60" not in dice
    assert "other split (the paper's test cases are not published)" in dice
    rec2 = {**rec, "run_id": rec["run_id"] + "x", "model_config": {**rec["model_config"], "spatial_dims": 2}}
    write_record(rec2, tmp_path / "flat")
    section = write_report(tmp_path / "flat", published=True).split("## Published vs ours")[1]
    assert "other model config" in next(line for line in section.splitlines() if line.startswith("| lightm_unet | DSC"))


def test_swin_unets_recorded_window_at_the_papers_value_is_the_registered_model(tmp_path):
    """Swin-Unet's record always holds the window it chose (7 at 224, the paper's own): a key at the paper
    configuration's value is the model as registered, so its gap to the paper is given; another window is not."""
    from bench.protocol import load_protocol

    config = {"num_classes": 9, "in_chans": 3, "img_size": 224, "window_size": 7}
    rec = make_record("swin_unet", dice=0.80, protocol="synapse_swin", case_ids=TRANSUNET_TEST_CASES,
                      model_config=config)
    rec["protocol"]["hash"] = load_protocol("synapse_swin").hash
    write_record(rec, tmp_path / "paper")
    write_record({**rec, "model_config": {**config, "window_size": 4}}, tmp_path / "window4")

    def dice_row(results):
        section = write_report(results, published=True).split("## Published vs ours · synapse")[1]
        return next(line for line in section.splitlines() if line.startswith("| swin_unet") and "| DSC " in line)

    row = dice_row(tmp_path / "paper")
    assert "79.13" in row and "80.00" in row and "+0.87" in row and "other model config" not in row
    assert "other model config" in dice_row(tmp_path / "window4")


def test_each_polyp_test_set_gets_its_own_board_scored_like_the_authors(tmp_path):
    """VM-UNet-V2 pools one confusion matrix per test set, not over all five: the per-set boards
    must equal 2TP/(2TP+FP+FN) summed over that set's images, and find that set's published rows."""
    import torch

    from bench.data import synthetic_root
    from bench.protocol import load_protocol
    from bench.registry import get_entry
    from bench.run import plan_grid, run_one

    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=2)
    root = synthetic_root("polyp", tmp_path / "synth")
    (root / ".bench-synthetic.json").unlink()  # stands for real data: the boards keep their real names
    (spec,) = plan_grid(models=["unet"], dataset="polyp", protocol=proto, seeds=[0], data_root=root,
                        synthetic=False, results_dir=tmp_path, model_overrides=dict(get_entry("unet").tiny))
    rec = run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    pub = tmp_path / "published.csv"
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   "VM-UNet-V2 Table 2,unet,polyp:clinicdb,dice,82.3,%,pooled per set,polyp,\n", encoding="utf-8")
    text = write_report(tmp_path, published=pub)
    for test_set in ("CVC-ClinicDB", "Kvasir"):
        rows = [r for r in rec["per_case"] if r["case"].startswith(f"{test_set}/")]
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        dsc = 100 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        section = text.split(f"## polyp:{test_set} · protocol")[1].split("\n## ")[0]
        assert dsc > 0 and re.search(rf"\| +{dsc:.2f} \|", section), (test_set, dsc, section)
    assert "## polyp · protocol" in text  # the run's own board, pooled over both sets, stays
    published = text.split("Published vs ours · polyp:CVC-ClinicDB")[1].split("\n## ")[0]
    assert "82.3" in published and "Published vs ours · polyp:Kvasir" not in text
    # the per-set boards, the ones the papers print, get their plots too (only the pooled board's were drawn)
    write_report(tmp_path, out=tmp_path / "report.md")
    drawn = {p.name for p in (tmp_path / "report_files").iterdir()}
    for board in ("polyp", "polyp-cvc-clinicdb", "polyp-kvasir"):
        assert any(n.startswith(f"dsc_vs_params__{board}__") for n in drawn), (board, drawn)
        assert any(n.startswith(f"per_class_dsc__{board}__") for n in drawn), (board, drawn)
    assert sum(n.startswith("training_curves") for n in drawn) == 1  # one training: one figure


def test_isic_all_gets_a_board_per_year_next_to_that_years_published_rows(tmp_path):
    """VM-UNet-V2's Table 1 ISIC rows come from one model trained on ISIC17 + ISIC18 merged and
    scored on each year's test set on its own (train_isic_all.py): a board per year, pooled like
    the authors', meeting that year's published rows; the gap only where the row's recipe ran."""
    import torch

    from bench.data import synthetic_root
    from bench.protocol import load_protocol
    from bench.registry import get_entry
    from bench.report import published_dataset
    from bench.run import plan_grid, run_one

    assert [published_dataset(f"isic_all:{s}") for s in ("isic17", "isic18")] == ["isic17", "isic18"]
    assert [published_dataset(f"isic_all:{s}") for s in ("ISIC2017", "isic_2018")] == ["isic17", "isic18"]
    assert [published_dataset(f"polyp:{s}") for s in ("CVC_ClinicDB", "CVC-612", "Kvasir-SEG", "ETIS-LaribPolypDB")] == [
        "polyp:clinicdb", "polyp:clinicdb", "polyp:kvasir", "polyp:etis"]
    assert published_dataset("isic_all:isic18 (synthetic)") == "isic18"
    root = synthetic_root("isic_all", tmp_path / "synth")
    (root / ".bench-synthetic.json").unlink()  # stands for real data: the boards keep their real names
    # smoke as written (not overridden), so a published row naming it gets its gap
    (spec,) = plan_grid(models=["unet"], dataset="isic_all", protocol=load_protocol("smoke"), seeds=[0],
                        data_root=root, synthetic=False, results_dir=tmp_path,
                        model_overrides=dict(get_entry("unet").tiny))
    rec = run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    pub = tmp_path / "published.csv"
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   "VM-UNet-V2 Table 1,unet,isic17,dice,90.31,%,legacy-isic,smoke,\n"
                   "VM-UNet-V2 Table 1,unet,isic18,dice,89.73,%,legacy-isic,isic_all,\n", encoding="utf-8")
    text = write_report(tmp_path, published=pub)
    dsc = {}
    for test_set in ("isic17", "isic18"):
        rows = [r for r in rec["per_case"] if r["case"].startswith(f"{test_set}/")]
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        dsc[test_set] = 100 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        section = text.split(f"## isic_all:{test_set} · protocol")[1].split("\n## ")[0]
        assert len(rows) == 8 and dsc[test_set] > 0, (test_set, rows)
        assert re.search(rf"\| +{dsc[test_set]:.2f} \|", section), (test_set, dsc, section)
    assert "## isic_all · protocol" in text  # the run's own board, pooled over both years, stays
    isic17 = text.split("Published vs ours · isic_all:isic17")[1].split("\n## ")[0]
    # the row's recipe ran, but with the tiny unet, not the registered one: shown, no gap
    assert "90.31" in isic17 and "other model config" in isic17 and f"{dsc['isic17'] - 90.31:+.2f}" not in isic17
    isic18 = text.split("Published vs ours · isic_all:isic18")[1].split("\n## ")[0]
    assert "89.73" in isic18 and "other recipe" in isic18  # the row's recipe is isic_all, the run's smoke


def test_strict_boards_say_how_many_entries_were_left_out(tmp_path):
    for seed, (n_nan, n_valid) in enumerate([(2, 14), (1, 15)]):
        rec = make_record("unet", seed=seed)
        rec["metrics"].update(n_nan_dice=n_nan, n_valid_dice=n_valid)
        write_record(rec, tmp_path / "some")
    rec = make_record("vmunet")
    rec["metrics"].update(n_nan_dice=0, n_valid_dice=16)
    write_record(rec, tmp_path / "some")
    md = render(load(tmp_path / "some"))
    assert "DSC n/a" in md and "both masks empty" in md
    assert re.search(r"\| unet .*\| +3/32 \|", md) and re.search(r"\| vmunet .*\| +0/16 \|", md)
    write_record(rec, tmp_path / "none")  # nothing left out: no column, no note
    assert "DSC n/a" not in render(load(tmp_path / "none"))


def test_training_gpu_peak_is_shown_where_runs_recorded_it(tmp_path):
    for seed, peak in enumerate([900.0, 1100.0]):
        rec = make_record("unet", seed=seed)
        rec["cost"].update(peak_mem_mb=peak, peak_mem_kind="cuda_train")
        write_record(rec, tmp_path)
    write_record(make_record("vmunet"), tmp_path)  # a CPU run: nothing measured
    md = render(load(tmp_path))
    assert "Train GPU peak (MB)" in md and re.search(r"\| unet .*\| +1100 \|", md)  # the most any seed needed
    assert "Train GPU peak" not in render(load(tmp_path).query("model == 'vmunet'"))


def test_a_row_with_an_untimed_run_shows_no_training_time(tmp_path):
    """A mean over the timed runs alone would pass one run's time for the row's: a run whose time is not
    recorded leaves its row's time unknown (NaN); a row of timed runs shows their mean."""
    for (model, seed), t in {("vmunet", 0): 100.0, ("vmunet", 1): None, ("unet", 0): 30.0, ("unet", 1): 50.0}.items():
        rec = make_record(model, seed=seed)
        rec["train"]["time_s"] = t
        if t is None:
            del rec["train"]["time_s"]
        write_record(rec, tmp_path)
    board = leaderboards(load(tmp_path))[("synapse", "synapse", "legacy-synapse")].set_index("model")
    assert math.isnan(board.loc["vmunet", "train_time_s"])
    assert board.loc["unet", "train_time_s"] == statistics.fmean([30.0, 50.0])


def test_training_time_is_shown_with_the_device_it_ran_on(tmp_path):
    for seed, t in enumerate([3000.0, 4200.0]):
        rec = make_record("unet", seed=seed)
        rec["train"]["time_s"] = t
        write_record(rec, tmp_path)
    md = render(load(tmp_path))
    assert re.search(r"\| unet .*\| +60\.0 min \|", md)  # (3000 + 4200) / 2 s
    assert "Train time: mean per run of the training loop's wall-clock time, resumes included, on AMD EPYC 7763 x2 threads / torch 2.5.1." in md
    gpu = make_record("vmunet", seed=0)
    gpu["device"] = {**gpu["device"], "device": "cuda:0", "gpu": "NVIDIA H200", "cuda": "13.0"}
    write_record(gpu, tmp_path)
    mixed = render(load(tmp_path))
    assert ("on different devices (AMD EPYC 7763 x2 threads / torch 2.5.1; NVIDIA H200 / CUDA 13.0 / torch 2.5.1): "
            "not comparable") in mixed
    # the numbers too, not the time alone (a fairness review): said whatever columns are shown
    said = ("Devices: these runs trained on 2 (AMD EPYC 7763 x2 threads / torch 2.5.1; NVIDIA H200 / CUDA 13.0 / torch "
            "2.5.1); a GPU's reduced")
    assert said in mixed and said in render(load(tmp_path), columns="paper") and said not in md
    # and seeds that differ between rows (unet 0, 1; vmunet 0)
    assert "Seeds differ between rows (unet 0, 1; vmunet 0): each mean is over its own seeds" in mixed
    assert "Seeds differ" not in md and "Processes:" not in mixed


def test_a_board_of_runs_trained_by_different_process_counts_says_so(tmp_path):
    """A fairness review: a seed trained with --nproc 2 joined the one-process seeds of its row, unmarked,
    though BatchNorm then normalises over each process's share of the batch."""
    for seed, size in ((0, 1), (1, 2)):
        rec = make_record("unet", seed=seed)
        rec["train"]["world_size"] = size
        write_record(rec, tmp_path)
    df = load(tmp_path)
    assert sorted(df["world_size"]) == [1, 2]
    assert "Processes: these runs trained with 1 or 2 processes;" in render(df)
    assert "Processes:" not in render(df[df["world_size"] == 1])


def test_a_board_of_runs_from_several_commits_says_so(tmp_path):
    """Seeds run before and after an upgrade were averaged with nothing saying the code differed."""
    for seed in range(2):
        write_record(make_record("unet", seed=seed), tmp_path)
    assert "Code: bench 0123456789ab." in render(load(tmp_path))  # one commit: named, as a shared report needs
    rec = make_record("unet", seed=2)
    rec["git_commit"] = "fedcba9876543210" * 2 + "-dirty"
    write_record(rec, tmp_path)
    caption = render(load(tmp_path))
    assert "Code: these runs come from 2 versions of bench (0123456789ab, fedcba987654-dirty). A row's mean can mix" \
        in caption and '"-dirty": a checkout with uncommitted edits.' in caption
    assert "Code per row" not in caption  # one row: its seeds are the versions' runs


def test_a_board_tells_code_versions_apart_by_their_sources(tmp_path):
    """A "-dirty" commit names no code (edits to a README or to a model read alike), and a wheel
    install names none: the records' source digest decides."""
    commit = "0123456789abcdef" * 2 + "01234567"

    def run(seed, git, digest):
        rec = make_record("unet", seed=seed)
        rec["git_commit"] = git
        if digest:
            rec["code_digest"] = digest
        write_record(rec, tmp_path)

    run(0, commit, None)  # written before digests were kept: its commit names its code
    run(1, commit, "aaaaaaaaaaaaaaaa")
    run(2, commit + "-dirty", "aaaaaaaaaaaaaaaa")  # edits outside the code (a results file)
    assert "Code: bench 0123456789ab." in render(load(tmp_path))  # one version
    run(3, commit + "-dirty", "bbbbbbbbbbbbbbbb")  # the code edited
    run(4, None, "cccccccccccccccc")  # an installed wheel
    assert ("Code: these runs come from 3 versions of bench (0123456789ab, 0123456789ab-dirty (sources "
            "bbbbbbbbbbbbbbbb), sources cccccccccccccccc)") in render(load(tmp_path))
    # the clean commit with a module git does not track: its sources tell (and which of them the record
    # without a digest ran is not known)
    run(5, commit, "dddddddddddddddd")
    assert ("5 versions of bench (0123456789ab, 0123456789ab (sources aaaaaaaaaaaaaaaa), 0123456789ab (sources "
            "dddddddddddddddd) (and 2 more))") in render(load(tmp_path))


def test_a_legacy_synapse_board_counts_the_misses_it_scores_hd95_zero(tmp_path):
    """legacy-synapse scores an organ predicted nowhere HD95 0, the best value: a model that finds
    nothing topped the HD95 column with no word of it outside the paired tests."""
    for model in ("unet", "vmunet"):
        write_record(make_record(model), tmp_path)
    assert "HD95 of misses" not in render(load(tmp_path))  # nothing missed
    rec = make_record("vmunet", seed=1, dice=0.0, hd95=0.0)
    for case in rec["per_case"][:5]:
        recount(case, rec["policy"], tp=0, fp=0, fn=90)
    recount(rec["per_case"][5], rec["policy"], tp=0, fn=0)  # a false positive: present nowhere
    write_record(restate(rec), tmp_path)
    n = len(make_record("unet")["per_case"])
    assert (f"legacy-synapse scores a structure predicted nowhere in a case HD95 0, the best value (the papers' "
            f"rule), so misses lower a model's HD95; missed case × class entries, over all runs: unet 0 of {n}, "
            f"vmunet 5 of {2 * n - 1}; the strict policy scores them with a penalty instead.") in render(load(tmp_path))
    # what to do is the command's to say, not a paper's caption
    with pytest.warns(UserWarning, match=r"scores the structures predicted nowhere HD95 0.*`bench rescore --policy "
                      rf"strict --results {re.escape(str(tmp_path))}` scores them with a penalty"):
        text = write_report(tmp_path, reference="unet")
    # the folder has those runs under strict already (a rescore): that board is what to read, not a command to run
    other = tmp_path / "with_strict"
    for path in (tmp_path / "records").glob("*.json"):
        rec = json.loads(path.read_text(encoding="utf-8"))
        write_record(rec, other)
        write_record({**rec, "run_id": rec["run_id"] + ".strict", "policy": "strict", "rescored_from": rec["run_id"]},
                     other)
    with pytest.warns(UserWarning, match=r"HD95 0, the best value \(.*\); the strict board of these runs scores them "
                      r"with a penalty$"):
        write_report(other)
    # a reviewer's folder: a strict run of the same models, of other seeds (trained so, no rescore): not these runs
    # on that board, nor where one run with misses is rescored and another is not
    for name, rescored in (("strict_other_runs", ()), ("strict_one_of_two", ("vmunet",))):
        folder = tmp_path / name
        for path in (tmp_path / "records").glob("*.json"):
            rec = json.loads(path.read_text(encoding="utf-8"))
            write_record(rec, folder)
            if rec["seed"] == 0:  # each model's strict run of seed 7; vmunet s0 rescored too, s1 (the misses) not
                write_record({**rec, "run_id": rec["run_id"] + "-s7", "seed": 7, "policy": "strict"}, folder)
                if rec["model"] in rescored:
                    write_record({**rec, "run_id": rec["run_id"] + ".strict", "policy": "strict",
                                  "rescored_from": rec["run_id"]}, folder)
        with pytest.warns(UserWarning, match=r"HD95 0, the best value \(.*\); `bench rescore --policy strict "
                          rf"--results {re.escape(str(folder))}` scores them with a penalty$") as said:
            write_report(folder)
        assert not any("board of these runs" in str(w.message) for w in said), name
    assert "bench rescore" not in text and "--policy strict" not in text  # the significance caution's fact alone
    assert "a model that finds nothing looks best on HD95." in text.split("## Significance")[1]
    # strict scores a miss with a penalty: nothing to say; nor where the HD95 column is not shown
    assert "HD95 of misses" not in render(load(tmp_path), columns=("params",))
    for path in (tmp_path / "records").glob("*.json"):
        rec = json.loads(path.read_text(encoding="utf-8"))
        rec["policy"] = "strict"
        path.write_text(json.dumps(rec), encoding="utf-8")
    assert "HD95 of misses" not in render(load(tmp_path))


def test_each_test_set_counts_its_own_misses(tmp_path):
    """A run scored on several test sets (isic_all, polyp) gets a board per set: each set's row
    carried the whole run's miss counts."""
    from bench.report import split_test_sets

    cases = ["isic17/a", "isic17/b", "isic18/c", "isic18/d", "isic18/e"]
    rec = make_record("unet", dataset="isic_all", case_ids=cases)
    for case in rec["per_case"][2:]:  # isic18's lesions missed
        recount(case, rec["policy"], tp=0, fp=0, fn=90)
    write_record(restate(rec), tmp_path)
    runs, _ = split_test_sets(load(tmp_path), load(tmp_path, level="case"))
    got = {r.dataset_name.split(":")[1]: (r.n_missed, r.n_present) for r in runs.itertuples()}
    assert got == {"isic17": (0, 2), "isic18": (3, 3)}
    assert load(tmp_path)[["n_missed", "n_present"]].values.tolist() == [[3, 5]]  # the run's, over its sets
    # a rescore of it: each set's run names the run it rescored on that set (bench report's board of these runs)
    write_record({**rec, "run_id": rec["run_id"] + ".strict", "policy": "strict", "rescored_from": rec["run_id"]},
                 tmp_path)
    runs, _ = split_test_sets(load(tmp_path), load(tmp_path, level="case"))
    twins = runs.dropna(subset=["rescored_from"])
    assert sorted(twins["rescored_from"]) == [f"{rec['run_id']}@isic17", f"{rec['run_id']}@isic18"]
    assert set(twins["rescored_from"]) == set(runs.loc[runs["rescored_from"].isna(), "run_id"])


def test_csv_boards_name_their_hd95_unit(tmp_path):
    """strict's HD95 is in mm, voxels or pixels by the data: the policy column does not say which."""
    import io

    for seed, unit in enumerate(["mm", "mm", "voxels"]):
        rec = make_record("unet", seed=seed, dataset="synapse" if seed < 2 else "acdc", protocol="synapse")
        rec.update(policy="strict", hd95_unit=unit)
        write_record(rec, tmp_path)
    table = pd.read_csv(io.StringIO(render(load(tmp_path), "csv")))
    assert dict(zip(table["dataset"], table["hd95_unit"])) == {"synapse": "mm", "acdc": "voxels"}


def test_cross_validation_runs_get_their_own_board(tmp_path):
    """Each fold tests other cases: fold runs never average with runs on a fixed test split, the
    board says which folds each model ran and that its std spans folds, and no paper's fixed-split
    number gets a gap against it."""
    from bench.protocol import load_protocol

    proto = load_protocol("lightm_unet_2d")
    for split, dice, model in [("fold0", 0.90, "unet"), ("fold1", 0.80, "unet"), ("fold2", 0.70, "unet"),
                               ("fold0", 0.95, "lightm_unet"), ("test", 0.60, "unet")]:
        rec = make_record(model, dataset="nnunet", dice=dice, protocol="lightm_unet_2d", classes=["lung"],
                          run_id=f"r_{model}_{split}")
        rec.update(dataset_name="nnunet:Dataset802_LungXray", policy="strict", split=split)
        rec["protocol"]["hash"] = proto.hash
        write_record(rec, tmp_path)
    boards = leaderboards(load(tmp_path))
    fixed = boards[("nnunet:Dataset802_LungXray", "lightm_unet_2d", "strict")]
    cv = boards[("nnunet:Dataset802_LungXray (cross-validation)", "lightm_unet_2d", "strict")]
    assert list(fixed["model"]) == ["unet"] and fixed["dice_mean"].iloc[0] == pytest.approx(0.60)
    unet = cv.set_index("model").loc["unet"]
    assert unet["dice_mean"] == pytest.approx(0.80) and unet["folds"] == "0-2" and unet["n_runs"] == 3
    md = write_report(tmp_path, published=True)
    section = md[md.index("## nnunet:Dataset802_LungXray (cross-validation)"):]
    header = next(line for line in section.splitlines() if line.startswith("| Model"))
    unet_row = next(line for line in section.splitlines() if line.startswith("| unet"))
    assert [c.strip() for c in header.split("|")][4] == "Folds" and unet_row.split("|")[4].strip() == "0-2"
    assert "over runs, one per seed and fold" in section
    # a CV journey: the folds' mean read as nnU-Net's cross-validation summary, which pools the folds' cases
    assert "The mean is over the folds' own scores, each over its validation cases: not nnU-Net's" in section
    assert "The mean is over the folds' own scores" not in md[:md.index("## nnunet:Dataset802_LungXray (cross-")]
    assert "Models tested on different folds (0; 0-2): not comparable." in section
    published = md.split("## Published vs ours · nnunet:Dataset802_LungXray (cross-validation)")[1]
    dice = next(line for line in published.splitlines() if line.startswith("| lightm_unet") and "96.17" in line)
    assert "other split (cross-validation)" in dice


def test_a_published_hd95_in_another_unit_gets_no_gap(tmp_path):
    """A strict board on the real Synapse h5 files has HD95 in voxels (they hold no spacing): a
    paper's HD95 in mm is shown without a difference (it was 31.00 - 12.50 = +18.50)."""
    from bench.protocol import load_protocol

    rec = make_record("transunet", dice=0.8, hd95=31.0, case_ids=TRANSUNET_TEST_CASES)
    rec.update(policy="strict", hd95_unit="voxels")
    rec["protocol"]["hash"] = load_protocol("synapse").hash
    write_record(rec, tmp_path)
    pub = tmp_path / "pub.csv"
    rows = ("transunet,synapse,hd95,12.5,mm,strict,synapse,", "transunet,synapse,hd95,30.0,voxels,strict,synapse,")
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   + "".join(f"Paper,{r}\n" for r in rows), encoding="utf-8")
    text = write_report(tmp_path, published=pub)
    lines = [line for line in text[text.index("## Published vs ours"):].splitlines() if line.startswith("| transunet")]
    assert any("12.5" in line and "other unit" in line and "+18.50" not in line for line in lines)
    assert any("| 30.00 " in line and "+1.00" in line for line in lines)


def test_an_uneven_fold_grid_is_named(tmp_path):
    """Seed 0 ran folds 0-4, seed 1 only 0-1 (an unfinished grid): the mean weighs folds 0-1 twice,
    and the Folds cell and caption say so instead of a plain "0-4"."""
    for seed, folds in ((0, range(5)), (1, range(2))):
        for fold in folds:
            rec = make_record("unet", seed=seed, dataset="nnunet", protocol="lightm_unet_2d", classes=["lung"],
                              run_id=f"r{seed}{fold}", dice=0.9 if seed == 0 else 0.5)
            rec.update(dataset_name="nnunet:Dataset802_LungXray", policy="strict", split=f"fold{fold}")
            write_record(rec, tmp_path)
    for fold in range(5):  # another model on the same folds, one seed: comparable, whatever unet's grid
        rec = make_record("vmunet", seed=0, dataset="nnunet", protocol="lightm_unet_2d", classes=["lung"],
                          run_id=f"v{fold}")
        rec.update(dataset_name="nnunet:Dataset802_LungXray", policy="strict", split=f"fold{fold}")
        write_record(rec, tmp_path)
    (board,) = leaderboards(load(tmp_path)).values()
    unet = board.set_index("model").loc["unet"]
    assert unet["folds"] == "0-4 (uneven: seed 0: 0-4; seed 1: 0, 1)" and unet["n_runs"] == 7
    text = write_report(tmp_path)
    assert "Uneven: a model's seeds tested other folds" in text and "not comparable" not in text
    for fold in range(2, 5):  # the grid finished: a plain range again
        rec = make_record("unet", seed=1, dataset="nnunet", protocol="lightm_unet_2d", classes=["lung"],
                          run_id=f"r1{fold}", dice=0.5)
        rec.update(dataset_name="nnunet:Dataset802_LungXray", policy="strict", split=f"fold{fold}")
        write_record(rec, tmp_path)
    (board,) = leaderboards(load(tmp_path)).values()
    assert list(board["folds"]) == ["0-4", "0-4"] and "Uneven" not in write_report(tmp_path)
    assert "& 0--4 &" in write_report(tmp_path, "latex")  # a range's en dash, in LaTeX


def _cv_record(model: str, fold: int, cases: list[str], dice: float, seed: int = 0, **kw) -> dict:
    """A run of one fold of nnU-Net-format data, scored on ``cases`` (its validation cases)."""
    rec = make_record(model, seed=seed, dataset="nnunet", protocol="lightm_unet_2d", classes=["lung"],
                      run_id=f"{model}{seed}{fold}", dice=dice, case_ids=cases, **kw)
    rec.update(dataset_name="nnunet:Dataset802_LungXray", policy="strict", split=f"fold{fold}")
    return rec


def test_a_csv_board_keeps_its_case_counts_numbers_when_folds_differ(tmp_path):
    """5 cases in 2 folds (3 and 2): the CSV's n_cases and n_train were "2/3" and "7/8", strings that
    turned the columns' pandas dtype into object; now numbers (the cases over the folds, the most
    training items of a run), with the runs' own counts beside them, and the Markdown as it was."""
    for fold, cases in ((0, ["a", "b", "c"]), (1, ["d", "e"])):
        write_record({**_cv_record("unet", fold, cases, 0.8), "n_train": 5 - len(cases) + 5}, tmp_path / "cv")
    write_record({**make_record("unet", seed=0), "n_train": 20}, tmp_path / "cv")  # a fixed split: counts agree
    table = pd.read_csv(io.StringIO(write_report(tmp_path / "cv", "csv")))
    assert table["n_cases"].dtype == "int64" and table["n_train"].dtype == "int64"
    cv = table[table["dataset"].str.endswith("(cross-validation)")].iloc[0]
    fixed = table[table["dataset"] == "synapse"].iloc[0]
    assert (cv["n_cases"], cv["n_cases_per_run"], cv["n_train"], cv["n_train_per_run"]) == (5, "2/3", 8, "7/8")
    assert (fixed["n_cases"], fixed["n_train"]) == (2, 20) and pd.isna(fixed["n_cases_per_run"])
    assert "test cases per run: 2/3; training items: 7/8." in write_report(tmp_path / "cv")
    # a board whose runs all agree has no such column; records before n_train leave it empty
    write_record(make_record("unet", seed=0), tmp_path / "old")
    old = pd.read_csv(io.StringIO(write_report(tmp_path / "old", "csv")))
    assert "n_cases_per_run" not in old and old["n_cases"].tolist() == [2] and old["n_train"].isna().all()


def test_a_cross_validation_board_gives_the_dsc_pooled_over_all_folds_cases(tmp_path):
    """nnU-Net's cross-validation summary scores every fold's validation cases together; the board's
    mean is over the folds' own scores. Folds of 3 cases and 2, at 0.8 and 0.5 (seed 0), 0.9 and 0.6
    (seed 1): the board's 70.00; pooled per seed (3 × 0.8 + 2 × 0.5) / 5 = 0.68 and 0.78, so 73.00, in
    the caption and the CSV."""
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for fold, cases, dice in ((0, ["a", "b", "c"], 0.8), (1, ["d", "e"], 0.5)):
            write_record(_cv_record("unet", fold, cases, dice + shift, seed=seed), tmp_path)
    write_record(make_record("unet", seed=0), tmp_path)  # a fixed split: no folds to pool
    md = write_report(tmp_path)
    cv = md[md.index("## nnunet:Dataset802_LungXray (cross-validation)"):]
    assert "| 70.00 ± " in next(line for line in cv.splitlines() if line.startswith("| unet"))
    assert ("DSC pooled over all folds' validation cases, as nnU-Net's cross-validation summary scores them "
            "(under the board's policy; per seed, then averaged over seeds): unet 73.00 over 5 cases.") in cv
    assert "DSC pooled" not in md[:md.index("## nnunet:Dataset802_LungXray (cross-validation)")]
    table = pd.read_csv(io.StringIO(write_report(tmp_path, "csv"))).set_index("dataset")
    assert table.loc["nnunet:Dataset802_LungXray (cross-validation)", "dice_pooled"] == pytest.approx(0.73)
    assert table.loc["nnunet:Dataset802_LungXray (cross-validation)", "dice_mean"] == pytest.approx(0.70)
    assert pd.isna(table.loc["synapse", "dice_pooled"])


def test_runs_on_other_data_or_from_other_weights_are_not_averaged(tmp_path):
    """Two copies of Synapse preprocessed otherwise (the records' data_id), or one model started
    from two pretrained files: their runs averaged into one row ("1 (2 runs)", 70.00 ± 14.14)."""
    for dice, data, sha in ((0.8, "files:aaaa1111aaaa1111", "1111"), (0.6, "files:bbbb2222bbbb2222", "2222")):
        rec = make_record("vmunet", seed=0, dice=dice, run_id=f"r{sha}")
        rec["data_id"] = data
        write_record(rec, tmp_path / "data")
        rec = make_record("vmunet", seed=0, dice=dice, run_id=f"i{sha}")
        rec["init"] = {"source": "vmamba", "file": "vmamba_small.pth", "sha256": sha * 16, "filled": 10, "kept": 0}
        write_record(rec, tmp_path / "init")
    boards = leaderboards(load(tmp_path / "data"))
    assert sorted(k.dataset for k in boards) == ["synapse (data aaaa1111)", "synapse (data bbbb2222)"]
    assert [b.loc[0, "dice_mean"] for b in boards.values()] == pytest.approx([0.8, 0.6])
    (board,) = leaderboards(load(tmp_path / "init")).values()
    rows = board.set_index("model")
    assert list(rows.index) == ["vmunet (init vmamba_small.pth@11111111)", "vmunet (init vmamba_small.pth@22222222)"]
    assert list(rows["dice_mean"]) == pytest.approx([0.8, 0.6]) and list(rows["n_runs"]) == [1, 1]
    # the case rows carry the same split: each row's CI and its own line in the tests and ranks
    text = write_report(tmp_path / "init", reference="vmunet (init vmamba_small.pth@11111111)")
    board = text[: text.index("## Significance")]
    assert "[80.00, 80.00]" in board and "[60.00, 60.00]" in board
    sig = text[text.index("## Significance"):]
    assert next(line for line in sig.splitlines() if line.startswith("| vmunet (init vmamba_small.pth@22222222)")
                and "DSC" in line)
    data = write_report(tmp_path / "data")
    assert "[80.00, 80.00]" in data and "[60.00, 60.00]" in data
    # one data id on a board (and older records without one): no tag
    write_record(make_record("unet", seed=0, dice=0.5), tmp_path / "one")
    rec = make_record("vmunet", seed=0)
    rec["data_id"] = "files:aaaa1111aaaa1111"
    write_record(rec, tmp_path / "one")
    assert [k.dataset for k in leaderboards(load(tmp_path / "one"))] == ["synapse"]
    assert "Repeated" not in render(load(tmp_path / "one"))
    # ...but the same model and seed once by path (an older record) and once by content: it counted twice
    # unsaid ("1 (2 runs)", a std over one seed), a results folder moved with its data retraining every run
    rec = make_record("unet", seed=0, dice=0.7)
    rec["data_id"] = "files:aaaa1111aaaa1111"
    write_record(rec, tmp_path / "one")
    md = render(load(tmp_path / "one"))
    assert re.search(r"\| unet +\| cnn +\| +1 \(2 runs\) \|", md)
    assert "Repeated: unet seed 0 ran more than once here, and each run counts in the mean" in md
    assert "delete the record" not in md  # the warning's to say (below), not a paper's caption
    assert "vmunet seed" not in md
    # and said where it is seen, naming the records to choose from
    ids = sorted(load(tmp_path / "one").query("model == 'unet'")["run_id"])
    with pytest.warns(UserWarning, match=rf"1 board row\(s\) count a seed more than once in their mean "
                                         rf"\(records/{ids[0]}\.json and records/{ids[1]}\.json\): .*delete the "
                                         r"record that should not count and its folder runs/<run id>/ \(else"):
        write_report(tmp_path / "one")


def test_reference_typos_and_markdown_only_options_are_one_clear_error(tmp_path):
    """A misspelt --reference printed 'no runs on this board' under every board; --reference and
    --published were silently dropped from CSV and LaTeX output."""
    write_record(make_record("vmunet", seed=0), tmp_path)
    write_record(make_record("unet", seed=0, dice=0.7), tmp_path)
    with pytest.raises(BenchError, match=r"--reference 'vmunett': no runs of that model in .*\(models there: unet, "
                                         r"vmunet\) \(did you mean 'vmunet'\?\)"):
        write_report(tmp_path, reference="vmunett")
    for fmt in ("csv", "cases"):
        with pytest.raises(BenchError, match=rf"--published adds tables after the boards; use --format md or latex "
                                             rf"\(got --format {fmt}\)"):
            write_report(tmp_path, fmt, published=True)
    with pytest.raises(BenchError, match="--reference and --published add tables after the boards"):
        write_report(tmp_path, "csv", reference="unet", published=True)
    # the plots' options where no plots are drawn did nothing, silently
    with pytest.raises(BenchError, match=r"--plot-format shapes the plots, which only a Markdown report written to a "
                                         r"file has \(--format md --out report.md\); got --format latex"):
        write_report(tmp_path, "latex", out=tmp_path / "t.tex", plot_format="pdf")
    with pytest.raises(BenchError, match="--plot-format and --plot-style shape the plots.*; got no --out"):
        write_report(tmp_path, "md", plot_format="pdf", plot_style="paper")
    from typer.testing import CliRunner

    from bench.cli import app

    cli = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--out", str(tmp_path / "t.csv"),
                                   "--plot-style", "paper"])
    assert "--plot-style shapes the plots" in str(cli.exception) and "got --format csv" in str(cli.exception)
    assert not (tmp_path / "t.csv").exists()
    ok = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--out", str(tmp_path / "t.tex")])
    assert ok.exit_code == 0, ok.output  # the defaults alone: nothing refused


def test_synthetic_boards_get_no_gap_to_the_papers(tmp_path):
    """Even under the paper's own recipe, a number on synthetic data says nothing about the model."""
    from bench.protocol import load_protocol

    rec = make_record("lightm_unet", dataset="nnunet", dice=0.95, protocol="lightm_unet_2d", classes=["lung"],
                      synthetic=True)
    rec.update(dataset_name="nnunet:Dataset802_LungXray", policy="strict")
    rec["protocol"]["hash"] = load_protocol("lightm_unet_2d").hash
    write_record(rec, tmp_path)
    section = write_report(tmp_path, published=True).split("## Published vs ours · nnunet:Dataset802_LungXray")[1]
    dice = next(line for line in section.splitlines() if line.startswith("| lightm_unet") and "96.17" in line)
    assert "| synthetic data " in dice and "-1.17" not in dice


def test_per_class_columns_follow_each_boards_own_class_ids(tmp_path):
    """ACDC (1 rv, 2 myo, 3 lv) beside a dataset numbering 1 lv, 2 rv: the frame's columns follow
    every record in the folder, and ACDC's board showed lv, rv, myo."""
    for model, name, classes in (("unet", "nnunet:Dataset027_ACDC", ["rv", "myo", "lv"]),
                                 ("vmunet", "nnunet:Dataset900_Other", ["lv", "rv"])):
        rec = make_record(model, dataset="nnunet", protocol="lightm_unet_2d", classes=classes,
                          class_dice={c: 0.5 + 0.1 * i for i, c in enumerate(classes)})
        rec.update(dataset_name=name, policy="strict")
        write_record(rec, tmp_path)
    boards = {k.dataset: b for k, b in leaderboards(load(tmp_path)).items()}
    acdc = [c for c in boards["nnunet:Dataset027_ACDC"].attrs["value_columns"] if c.startswith("dice/")]
    other = [c for c in boards["nnunet:Dataset900_Other"].attrs["value_columns"] if c.startswith("dice/")]
    assert acdc == ["dice/rv", "dice/myo", "dice/lv"] and other == ["dice/lv", "dice/rv"]
    assert boards["nnunet:Dataset027_ACDC"].loc[0, "dice/rv_mean"] == pytest.approx(0.5)


def test_captions_say_what_the_numbers_are_where_names_could_mislead(tmp_path):
    """From a numbers audit (every number was right): HD95's unit stood in the caption only, a single
    run's board spoke of "mean ± std over seeds: 1", Synapse's mIoU/Acc/Spe/Sen (no paper reports
    them; Acc and Spe near 100% from the background) and ISIC's "mIoU" (the pooled foreground IoU)
    were unexplained, a gap to a paper named only the first of its reasons, and 3 test cases gave
    p-values that could never fall below 0.25 unsaid."""
    for model, dice in (("vmunet", 0.8), ("unet", 0.7)):
        write_record({**make_record(model, seed=0, dice=dice), "hd95_unit": "voxels"}, tmp_path)
    text = write_report(tmp_path)
    header = next(line for line in text.splitlines() if line.startswith("| Model"))
    assert "HD95 ↓ (voxels)" in header and "DSC ↑ (%)" in header
    assert "One run per model (no ± std); test cases per run: 2" in text and "± std" not in text.split("(no ± std)")[1]
    assert ("mIoU: per case and class, one class against the rest, then averaged as DSC is (no Synapse paper reports "
            "it).") in text
    full = tmp_path / "full"  # Acc/Spe/Sen too, as runs record them
    rec = make_record("unet")
    rec["metrics"].update(acc=0.99, spe=0.995, sen=0.8)
    write_record(restate(rec), full)
    assert ("mIoU, Acc, Spe, Sen: per case and class, one class against the rest, then averaged as DSC is (no Synapse "
            "paper reports them); Acc and Spe count every background voxel, so they sit near 100%.") in write_report(full)
    write_record({**make_record("unet", seed=1, dice=0.72), "hd95_unit": "voxels"}, tmp_path)
    assert "Mean ± std (sample, ddof=1) over seeds: 1/2 per model" in write_report(tmp_path)
    isic = tmp_path / "isic"
    write_record(make_record("unet", dataset="isic17"), isic)
    assert ("mIoU: the foreground IoU of the confusion matrix pooled over the test set (the papers' name), not a "
            "mean over classes.") in write_report(isic)
    # a paired test over 2 cases: p >= 0.5 whatever the models do
    sig = write_report(tmp_path, reference="unet")
    assert ("Caution: with 2 shared test cases the smallest p these tests can give is 2/2^2 = 0.5, so no difference "
            "can reach p < 0.05 here.") in sig
    # every reason a gap is not given, not the first alone
    pub = tmp_path / "pub.csv"
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   "Paper B Table 3,vmunet,synapse,dice,82.00,%,strict,synapse_vmunet,\n", encoding="utf-8")
    section = write_report(tmp_path, published=pub).split("## Published vs ours")[1]
    row = next(line for line in section.splitlines() if line.startswith("| vmunet"))
    assert "other recipe; other metric policy" in row


def test_a_folder_whose_runs_never_finished_says_so(tmp_path):
    """From a data journey: runs that failed after training left their folders and no record, and
    the report said to pass the --results folder of bench run, which it was."""
    (tmp_path / "runs" / "synapse-smoke-unet-s0-1e81a7b6" / "checkpoints").mkdir(parents=True)
    with pytest.raises(BenchError) as md:
        write_report(tmp_path)
    assert str(md.value).startswith(
        f"{tmp_path}: no finished runs; 1 run(s) began here (synapse-smoke-unet-s0-1e81a7b6) and none wrote its "
        f"record (a run failed or is still training: its run.log in {tmp_path / 'runs'}/<run id>/ says why")
    with pytest.raises(BenchError) as methods:
        write_report(tmp_path, "methods", models="all")
    assert str(methods.value) == str(md.value)  # the same words, whatever the format
    # a killed rescore's claim folder (nothing but its .claim) is no run that began
    (tmp_path / "runs" / "synapse-smoke-unet-s0-1e81a7b6.strict").mkdir()
    (tmp_path / "runs" / "synapse-smoke-unet-s0-1e81a7b6.strict" / ".claim").write_text("gone\n", encoding="utf-8")
    with pytest.raises(BenchError) as again:
        write_report(tmp_path)
    assert str(again.value) == str(md.value)


def test_a_sub_second_training_time_is_not_shown_as_zero():
    # a custom-protocol journey's 0.48 s loop read "0 s", as if untimed
    from bench.report.board_text import _fmt_duration

    assert [_fmt_duration(s) for s in (0.04, 0.48, 5.2, 150.0, 9000.0)] == ["< 0.1 s", "0.5 s", "5 s", "2.5 min",
                                                                          "2.5 h"]
    assert _fmt_duration(float("nan")) == ""


def test_paper_layout_bolds_ties_as_printed_and_keeps_hd95_of_one_class_softmax_boards(tmp_path):
    """A review: 82.745 and 82.75 both print 82.75, yet only one was bold (numpy's round-half-even on
    a scaled float); a softmax board of one foreground class (MSD Spleen) was laid out as ISIC's."""
    for model, dice in (("unet", 0.82745), ("vmunet", 0.8275), ("transunet", 0.80)):
        write_record(make_record(model, dataset="isic17", seed=0, dice=dice), tmp_path / "tie")
    md = render(load(tmp_path / "tie"), "md", columns=parse_columns("paper"))
    rows = [line for line in md.splitlines() if line.startswith(("| unet", "| vmunet"))]
    assert len(rows) == 2 and all("**82.75**" in row for row in rows)
    for model, hd in (("unet", 20.0), ("vmunet", 5.0)):
        write_record(make_record(model, dataset="nnunet", seed=0, classes=["spleen"], hd95=hd), tmp_path / "spleen")
    md = render(load(tmp_path / "spleen"), "md", columns=parse_columns("paper"))
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert "HD95" in header and "mIoU" not in header and "Acc" not in header
    assert "**5.00**" in next(line for line in md.splitlines() if line.startswith("| vmunet"))
    assert " DSC in %" in md  # the caption names the metrics shown


def test_paper_bold_is_tested_against_the_runner_up(tmp_path):
    """A review: --columns paper bolded the best mean where the report's own paired tests could not tell it
    from the runner-up (3 test cases: no Wilcoxon p below 0.25). The bold stays the best mean; the caption
    gives its paired test against the runner-up (the second best, not the worst of three), a † marks p >= 0.05,
    and without case rows it says untested."""
    for n, folder in ((3, "few"), (8, "many")):
        for model, dice, hd in (("vmunet", 0.80, 20.0), ("unet", 0.70, 25.0)):
            write_record(make_record(model, seed=0, dice=dice, hd95=hd, n_cases=n), tmp_path / folder)
    paper = parse_columns("paper")
    few = render(load(tmp_path / "few"), "md", load(tmp_path / "few", level="case"), columns=paper)
    vm = next(r for r in md_rows(few, "Model") if r["Model"] == "vmunet")
    assert vm["DSC ↑ (%)"] == "**80.00 †**" and vm["HD95 ↓"] == "**20.00 †**" and vm["Aorta"] == "**80.00**"
    assert ("DSC p = 0.25 † against unet over 3 cases; HD95 p = 0.25 † against unet over 3 cases; †: p >= 0.05, "
            "these cases do not separate it from the runner-up; untested (best mean only): the per-class columns"
            in few)
    many = render(load(tmp_path / "many"), "md", load(tmp_path / "many", level="case"), columns=paper)
    vm = next(r for r in md_rows(many, "Model") if r["Model"] == "vmunet")
    assert vm["DSC ↑ (%)"] == "**80.00**" and "DSC p = 0.00781 against unet over 8 cases" in many
    untested = render(load(tmp_path / "many"), "md", columns=paper)  # no case rows: no test
    assert "Bold: each column's best mean, untested (no paired test against the runner-up)." in untested
    assert "†" not in untested
    tex = render(load(tmp_path / "few"), "latex", load(tmp_path / "few", level="case"), columns=paper)
    assert "\\textbf{80.00 $^\\dagger$}" in tex and "$^\\dagger$: p $\\geq$ 0.05, these cases" in tex
    for model, dice, hd in (("vmunet", 0.80, 20.0), ("unet", 0.70, 25.0)):  # one case: "1 case", not "1 cases"
        write_record(make_record(model, seed=0, dice=dice, hd95=hd, n_cases=1), tmp_path / "one")
    one = render(load(tmp_path / "one"), "md", load(tmp_path / "one", level="case"), columns=paper)
    assert "DSC p = 1 † against unet over 1 case;" in one
    for model, dice in (("vmunet", 0.80), ("unet", 0.79), ("transunet", 0.50)):
        write_record(make_record(model, seed=0, dice=dice, n_cases=8), tmp_path / "three")
    three = render(load(tmp_path / "three"), "md", load(tmp_path / "three", level="case"), columns=paper)
    assert "DSC p = 0.00781 against unet over 8 cases" in three and "against transunet" not in three


def test_per_class_cells_are_said_to_be_means_where_a_board_shows_some(tmp_path):
    """A review: a binary ISIC board under --columns paper ended "per-class cells are means.", with none shown."""
    for seed in (0, 1):
        for model, dice in (("vmunet", 0.80), ("unet", 0.70)):
            write_record(make_record(model, seed=seed, dice=dice + seed / 100), tmp_path)
            write_record(make_record(model, dataset="isic17", seed=seed, dice=dice + seed / 100), tmp_path)
    tex = render(load(tmp_path), "latex", columns=parse_columns("paper"))
    isic, synapse = tex.split("\\label")[:2]
    assert "Bold: each column's best mean" in isic and "per-class" not in isic
    assert "per-class cells are means." in synapse


def test_paper_board_of_one_model_says_once_why_nothing_is_bold(tmp_path):
    """A review: a board of one model row (two seeds) printed no bold and said nothing of why; it says so once
    for the board, not per column; a board of two models does not say it."""
    for seed, dice in ((0, 0.70), (1, 0.74)):
        write_record(make_record("unet", dataset="isic17", seed=seed, dice=dice), tmp_path / "one")
    md = render(load(tmp_path / "one"), "md", columns=parse_columns("paper"))
    assert "**" not in md and md.lower().count("no bold") == 1
    assert "No bold: one model, nothing to compare." in md  # a binary board: no per-class cells to explain
    write_record(make_record("vmunet", dataset="isic17", dice=0.80), tmp_path / "one")
    assert "nothing to compare" not in render(load(tmp_path / "one"), "md", columns=parse_columns("paper"))


def test_paper_bold_whose_test_favours_the_runner_up_is_marked(tmp_path):
    """A review: a best mean resting on one case (unet 0.81 in 19 of 20 cases and 0 in one, vmunet 0.80 in all:
    vmunet's mean is higher, yet unet wins 19 cases, p = 0.0004) was bolded with no mark, as backed by the cases.
    A p < 0.05 in the runner-up's favour (the effect size's sign) is marked ‡, † keeping p >= 0.05 alone."""
    n = 20
    for model, dices in (("unet", [0.81] * (n - 1) + [0.0]), ("vmunet", [0.80] * n)):
        rec = make_record(model, n_cases=n)
        for row in rec["per_case"]:
            recount(row, rec["policy"], dice=dices[int(row["case"][-4:])])
        write_record(restate(rec), tmp_path)
    md = render(load(tmp_path), "md", load(tmp_path, level="case"), columns=parse_columns("paper"))
    rows = {r["Model"]: r for r in md_rows(md, "Model")}
    assert rows["vmunet"]["DSC ↑ (%)"] == "**80.00 ‡**" and rows["unet"]["DSC ↑ (%)"] == "76.95"
    assert ("DSC p = 0.000393 ‡ against unet over 20 cases; ‡: p < 0.05 in the runner-up's favour: by the test the "
            "cases favour it, and the best mean rests on a few of them") in md
    assert "†" not in md  # no p >= 0.05 here: its mark is not explained either


def test_paper_bold_leaves_out_a_model_that_found_nothing_from_spe_and_acc(tmp_path):
    """A review: Spe 100.00 went in bold to a model predicting background everywhere (DSC 0), as its Acc
    would where the lesions are small; a column with no row to bold said nothing of why."""
    write_record(make_record("unet", dataset="isic17", seed=0, dice=0.70), tmp_path)
    empty = make_record("vmunet", dataset="isic17", seed=0, dice=0.0)
    for row in empty["per_case"]:  # background everywhere: every lesion missed, every background pixel right
        recount(row, empty["policy"], tp=0, fp=0, fn=200_000, tn=19_800_000)  # small lesions: its Acc the best too
    write_record(restate(empty), tmp_path)
    assert (empty["metrics"]["spe"], empty["metrics"]["acc"], empty["metrics"]["sen"]) == (1.0, 0.99, 0.0)
    md = render(load(tmp_path), "md", columns=parse_columns("paper"))
    rows = {r["Model"]: r for r in md_rows(md, "Model")}
    assert rows["vmunet"]["Spe ↑ (%)"] == "100.00" and rows["unet"]["Spe ↑ (%)"].startswith("**")
    assert rows["vmunet"]["Acc ↑ (%)"] == "99.00" and rows["unet"]["Acc ↑ (%)"].startswith("**")
    assert "Bold: each column's best mean (Spe and Acc among the models that found some structure)" in md
    # legacy-synapse: every model missed an organ somewhere, so no HD95 is bold, and the caption says why
    for model, dice in (("unet", 0.7), ("vmunet", 0.8)):
        rec = make_record(model, seed=0, dice=dice, hd95=10.0 if model == "unet" else 20.0)
        recount(rec["per_case"][0], rec["policy"], tp=0, fp=0)["hd95"] = 0.0  # a miss: HD95 0 under legacy-synapse
        write_record(restate(rec), tmp_path / "missed")
    md = render(load(tmp_path / "missed"), "md", columns=parse_columns("paper"))
    assert "**" not in "".join(r["HD95 ↓"] for r in md_rows(md, "Model"))
    assert "HD95: no bold, every model missed some structure, which the policy scores HD95 0" in md


def test_no_bold_names_the_rows_each_rule_left_out(tmp_path):
    """A review: a column with no bold read "every model missed some structure ...; the other rows' weights were
    only evaluated" where the models that missed were two of three: each reason names the rows it left out."""
    given = {"file": "t.pth", "sha256": "ab" * 32, "trained_by": None}
    for model, hd, miss, weights in (("unet", 25.0, True, None), ("vmunet", 20.0, True, None),
                                     ("transunet", 15.0, False, given)):
        rec = make_record(model, hd95=hd, n_cases=4)
        if miss:
            recount(rec["per_case"][0], rec["policy"], tp=0, fp=0)["hd95"] = 0.0
        if weights:
            rec["weights"] = weights
        write_record(restate(rec), tmp_path / "synapse")
    md = render(load(tmp_path / "synapse"), "md", columns=parse_columns("paper"))
    assert ("HD95: no bold, unet and vmunet missed some structure, which the policy scores HD95 0; the weights of "
            "transunet (weights t.pth@abababab) were only evaluated.") in md and "every model" not in md
    # Spe and Acc: the trained model found nothing, the other's weights were only evaluated
    write_record({**make_record("unet", dataset="isic17", dice=0.70), "weights": given}, tmp_path / "isic")
    empty = make_record("vmunet", dataset="isic17", dice=0.0)
    for row in empty["per_case"]:
        recount(row, empty["policy"], tp=0, fp=0, fn=1_000_000, tn=19_000_000)
    write_record(restate(empty), tmp_path / "isic")
    md = render(load(tmp_path / "isic"), "md", columns=parse_columns("paper"))
    assert ("Spe: no bold, vmunet found no structure (background everywhere scores Spe 100); the weights of unet "
            "(weights t.pth@abababab) were only evaluated") in md


def test_single_run_reads_a_board_and_its_runs_alike(tmp_path):
    """One place decides "one run per model, so no ± std", for the board's caption and the Methods text (which
    holds the labelled runs, not the board)."""
    from bench.report.board_text import single_run
    from bench.report.labels import label_runs

    for model, seed in (("unet", 0), ("vmunet", 0)):
        write_record(make_record(model, seed=seed), tmp_path)
    runs = label_runs(load(tmp_path))
    board = next(iter(leaderboards(load(tmp_path)).values()))
    assert single_run(board) and single_run(runs)
    write_record(make_record("vmunet", seed=1), tmp_path)
    runs = label_runs(load(tmp_path))
    board = next(iter(leaderboards(load(tmp_path)).values()))
    assert not single_run(board) and not single_run(runs)


def _trained_and_rescored_at_another_commit(folder) -> None:
    """A unet run (make_record's commit) and its strict rescore, scored at commit fedcba98..."""
    rec = make_record("unet", seed=0)
    write_record(rec, folder)
    rescored = make_record("unet", seed=0, run_id=f"{rec['run_id']}.strict")
    rescored.update(policy="strict", rescored_from=rec["run_id"],
                    rescored_with={"git_commit": "fedcba9876543210fedcba9876543210fedcba98", "code_digest": None,
                                   "device": rec["device"], "packages": {}})
    write_record(rescored, folder)


def test_a_rescored_board_names_the_code_that_scored_it(tmp_path):
    """A review: a strict board rescored at another commit named the training's code as its numbers'."""
    _trained_and_rescored_at_another_commit(tmp_path)
    md = render(load(tmp_path), "md")
    strict = md[md.index("policy strict"):]
    # the numbers' code and the weights' code, both
    assert "Code: trained under bench 0123456789ab; scored under bench fedcba987654." in strict
    assert "Code: bench 0123456789ab." in md[:md.index("policy strict")]


def test_a_rescored_board_names_the_code_that_trained_it(tmp_path):
    """An audit: a run trained under edited code and rescored under clean code read as clean code's."""
    clean = "fedcba9876543210fedcba9876543210fedcba98"
    rec = make_record("unet", seed=0)
    rec.update(git_commit="0123456789abcdef0123456789abcdef01234567-dirty", code_digest="aaaaaaaaaaaaaaaa")

    def strict_board(folder, commit, digest):
        rescored = make_record("unet", seed=0, run_id=f"{rec['run_id']}.strict")
        rescored.update(policy="strict", rescored_from=rec["run_id"], git_commit=rec["git_commit"],
                        code_digest=rec["code_digest"], rescored_with={"git_commit": commit, "code_digest": digest,
                                                                       "device": rec["device"], "packages": {}})
        write_record(rec, tmp_path / folder)
        write_record(rescored, tmp_path / folder)
        md = render(load(tmp_path / folder), "md")
        return md[md.index("policy strict"):]

    assert ("Code: trained under bench 0123456789ab-dirty (sources aaaaaaaaaaaaaaaa); scored under bench "
            'fedcba987654. "-dirty": a checkout with uncommitted edits.') in strict_board("a", clean, "c" * 16)
    # scored under the code it trained under: one version, said once
    strict = strict_board("b", rec["git_commit"], rec["code_digest"])
    assert "Code: bench 0123456789ab-dirty (sources aaaaaaaaaaaaaaaa)." in strict and "scored under bench" not in strict


def test_a_resumed_run_names_every_code_it_trained_under(tmp_path):
    """An audit: a run trained under edited code, killed and resumed under clean code, read as the clean code's."""
    dirty, clean = "0123456789abcdef" * 2 + "01234567-dirty", "fedcba9876543210" * 2 + "fedcba98"
    rec = make_record("unet", seed=0)
    rec.update(git_commit=clean, code_digest="bbbbbbbbbbbbbbbb")
    rec["train"]["commits"] = [f"{dirty} sources aaaaaaaaaaaaaaaa", clean]  # as train._resumed_commits keeps them
    write_record(rec, tmp_path)
    df = load(tmp_path)
    assert df["train_commits"].iloc[0] == f"{dirty} sources aaaaaaaaaaaaaaaa,{clean}"
    caption = render(df)
    assert ("Code: these runs come from 2 versions of bench (0123456789ab-dirty (sources aaaaaaaaaaaaaaaa), "
            "fedcba987654). Every run was trained under each in turn") in caption
    # a seed trained under the clean code alone: the row's mean is over runs of other code
    write_record({**make_record("unet", seed=1), "git_commit": clean, "code_digest": "bbbbbbbbbbbbbbbb"}, tmp_path)
    caption = render(load(tmp_path))
    assert "fedcba987654). A row's mean can mix runs of several versions" in caption


def test_a_board_whose_code_follows_its_rows_says_the_comparison_is_confounded(tmp_path):
    """An audit: every vmunet run under edited code, every unet run under a commit; the caption named two
    versions, not which rows ran which, though the model comparison is then the code's too."""
    import io

    dirty, clean = "0123456789abcdef" * 2 + "01234567-dirty", "fedcba9876543210" * 2 + "fedcba98"
    for seed in range(2):
        write_record({**make_record("unet", seed=seed), "git_commit": clean}, tmp_path)
        write_record({**make_record("vmunet", seed=seed, dice=0.9), "git_commit": dirty}, tmp_path)
    df = load(tmp_path)
    caption = render(df)
    # in the board's order (vmunet's higher DSC first)
    assert ("Code per row: vmunet: 0123456789ab-dirty; unet: fedcba987654; the versions follow the rows, so between "
            "rows of other code the model comparison and the code change cannot be told apart.") in caption
    table = pd.read_csv(io.StringIO(render(df, "csv")))
    assert dict(zip(table["model"], table["code"])) == {"unet": clean, "vmunet": dirty}  # each row's own
    # a model's seeds under both: the rows do not split by code, a row's mean is over both
    write_record({**make_record("unet", seed=2), "git_commit": dirty}, tmp_path)
    caption = render(load(tmp_path))
    assert "unet: 0123456789ab-dirty, fedcba987654; a row's mean can mix" in caption
    # many rows of other code each: every one named, none cut off as "(and 2 more)"
    for model in ("transunet", "swinunet", "missformer", "hiformer"):
        write_record({**make_record(model), "git_commit": model[0] * 40}, tmp_path)
    per_row = render(load(tmp_path)).split("Code per row: ")[1]
    assert "more)" not in per_row and all(f"{m}: {m[0] * 12};" in per_row for m in ("missformer", "hiformer"))


def test_code_per_row_names_every_row_of_other_code_and_sums_up_the_rest(tmp_path):
    """An audit: "Code per row" named the first 4 rows and "(and 2 more)", which read as the last row's
    and hid the one row trained on uncommitted code."""
    clean, dirty = "fedcba9876543210" * 2 + "fedcba98", "0123456789abcdef" * 2 + "01234567-dirty"
    models = ("hiformer", "missformer", "swinunet", "transunet", "unet", "vmunet")
    for model in models:
        write_record({**make_record(model), "git_commit": clean}, tmp_path)
    write_record({**make_record("unet", seed=1), "git_commit": "a" * 40}, tmp_path)
    write_record({**make_record("vmunet", seed=1), "git_commit": dirty}, tmp_path)
    caption = render(load(tmp_path)).split("Code per row: ")[1]
    assert f"unet: {'a' * 12}, fedcba987654;" in caption and "vmunet: 0123456789ab-dirty, fedcba987654;" in caption
    assert "; all 4 other rows: fedcba987654; a row's mean can mix" in caption and "more)" not in caption


def test_a_one_class_board_of_ones_own_data_names_its_class(tmp_path):
    """A data journey: `--label disc` was on no board (a one-class board shows no class column) nor in
    the Methods text; built-in data (ISIC's lesion) needs no saying."""
    rec = make_record("unet", seed=0, dataset="nnunet", classes=["disc"])
    write_record({**rec, "dataset_name": "nnunet:Fundus"}, tmp_path / "own")
    text = write_report(tmp_path / "own")
    assert "## nnunet:Fundus" in text and " Class: disc." in text
    write_record(make_record("unet", seed=0, dataset="isic17"), tmp_path / "isic")
    assert "Class:" not in write_report(tmp_path / "isic")


def test_a_hand_edited_aggregate_is_recomputed_from_its_case_rows_and_said(tmp_path):
    """metrics.dice edited to 0.80 printed 80.00 beside its own CI [26, 40] and per-organ 30.00 cells, and --columns
    paper set it in bold: bench report recomputes each record's numbers from its case rows, shows those, warns
    naming the file and the numbers, and the caption says so. Records as bench writes them say nothing. Not
    "edited by hand?" alone: a record stored by a bench that aggregated otherwise differs too, and the code that
    stored it is named."""
    edited = make_record("unet", seed=0, dice=0.3)
    edited["metrics"]["dice"] = 0.80
    write_record(edited, tmp_path)
    write_record(make_record("vmunet", seed=0, dice=0.5), tmp_path)
    write_record(make_record("vmunet", dataset="isic17", seed=0, dice=0.88), tmp_path)  # legacy-isic: pooled counts
    with pytest.warns(UserWarning, match=r"1 record\(s\) hold numbers other than this code recomputes from their own "
                                         r"case rows \(edited by hand, or stored by a version of bench that aggregated "
                                         rf"otherwise\): .*{edited['run_id']}\.json: dice 0\.8 stored, 0\.3 from the "
                                         r"case rows \(stored by code 0123456789ab\)") as caught:
        text = write_report(tmp_path, columns="paper")
    assert sum("this code recomputes" in str(w.message) for w in caught) == 1  # once, the isic record silent
    isic, synapse = text.split("## synapse")
    rows = {r["Model"]: r for r in md_rows(synapse, "Model")}
    # † : 2 test cases cannot separate the best from the runner-up
    assert rows["unet"]["DSC ↑ (%)"] == "30.00" and rows["vmunet"]["DSC ↑ (%)"] == "**50.00 †**"
    assert (f"Restated: the stored numbers of 1 record(s) differ from those this code recomputes from their own case "
            f"rows (records/{edited['run_id']}.json: dice 0.8 stored, 0.3 from the case rows (stored by code "
            "0123456789ab)): edited by hand, or stored by a version of bench that aggregated otherwise; this board "
            "shows the recomputed numbers.") in text
    assert "Restated" not in isic
    assert load(tmp_path).set_index("model").loc["unet", "dice"] == 0.80  # load as such reads what is stored


def test_a_published_file_is_named_and_its_numbers_unlike_the_bundled_tables_marked(tmp_path):
    """--published-file's rows read "6.85 % | VM-UNet (arXiv:…) Table 2" as the paper's, and the report never
    named the file: its caption names it (path as given, sha256), and a number the bundled table gives otherwise,
    or not at all, is marked § (not †, the paper layout's untested bold), its Note saying what the bundled table
    gives."""
    import hashlib

    from bench.published import DEFAULT_PATH

    write_record(make_record("vmunet", seed=0, dice=0.8, hd95=18.0, case_ids=TRANSUNET_TEST_CASES), tmp_path)
    t2 = "VM-UNet (arXiv:2402.02491v1) Table 2"
    pub = tmp_path / "mine.csv"
    pub.write_text("source,model,dataset,metric,value,unit,convention,protocol,note\n"
                   f"{t2},vmunet,synapse,dice,6.85,%,legacy-synapse,synapse_vmunet,\n"  # bundled: 81.08
                   f"{t2},vmunet,synapse,hd95,19.21,voxels,legacy-synapse,synapse_vmunet,\n"  # as bundled
                   "Made-up Table 9,vmunet,synapse,dice:aorta,99.00,%,legacy-synapse,synapse_vmunet,made up\n",
                   encoding="utf-8")
    sha = hashlib.sha256(pub.read_bytes()).hexdigest()[:12]
    for fmt in ("md", "latex"):
        text = write_report(tmp_path, fmt, published=pub)
        assert f"Published numbers: from {pub} (sha256 {sha}) (--published-file), not the bundled" in text.replace(
            "\\_", "_").replace("-{}-", "--")
        assert ("§ marks a number the bundled table gives otherwise" if fmt == "md" else
                "\\S{} marks a number the bundled table gives otherwise") in text
    rows = {r["Metric"]: r for r in md_rows(write_report(tmp_path, published=pub).split("## Published vs ours")[1],
                                            "Model")}
    assert (rows["DSC"]["Published"], rows["DSC"]["Note"]) == ("6.85 % §", "§ differs from the bundled table's 81.08 %")
    assert (rows["HD95"]["Published"], rows["HD95"]["Note"]) == ("19.21 voxels", "")
    assert (rows["DSC (Aorta)"]["Published"], rows["DSC (Aorta)"]["Note"]) == (
        "99.00 % §", "§ not in the bundled table; made up")
    bundled = write_report(tmp_path, published=DEFAULT_PATH)  # the bundled table by its path: nothing to mark
    assert "--published-file" not in bundled.split("## Published vs ours")[1] and "§" not in bundled


def test_a_modified_copy_of_a_built_in_protocol_says_so_in_its_title(tmp_path):
    """A copy of smoke.toml with other epochs, its name still "smoke", read "protocol smoke v1 (7a420ec5…)" as the
    built-in does but for the hash: its title, in Markdown, LaTeX and the CSV, says it is a modified copy and names
    the built-in's hash; an earlier version of a built-in is called that; the built-in as it is, nothing."""
    smoke = load_protocol("smoke")
    for folder, version, digest in (("copy", smoke.version, "7a420ec553f93057"), ("old", smoke.version - 1, "7a420ec553f93057"),
                                    ("same", smoke.version, smoke.hash)):
        rec = make_record("unet", protocol="smoke")
        rec["protocol"].update(version=version, hash=digest)
        write_record(rec, tmp_path / folder)
    title = f"protocol smoke v{smoke.version} (7a420ec553f93057), a modified copy (built-in: {smoke.hash}) · policy"
    assert title in write_report(tmp_path / "copy")
    assert title.replace("·", "$\\cdot$") in write_report(tmp_path / "copy", "latex")
    csv = pd.read_csv(io.StringIO(write_report(tmp_path / "copy", "csv")))
    assert list(csv["protocol_builtin"]) == [f"a modified copy (built-in: {smoke.hash})"]
    assert f"v{smoke.version - 1} (7a420ec553f93057), another version (built-in: v{smoke.version}, {smoke.hash})" \
        in write_report(tmp_path / "old")
    same = write_report(tmp_path / "same")
    assert f"protocol smoke v{smoke.version} ({smoke.hash}) · policy" in same and "built-in:" not in same


def test_the_cases_csv_names_each_runs_code_and_first_policy_and_the_board_csv_its_training_device(tmp_path):
    """A review: `--format cases` rows had no code version nor rescored_from_policy, which the board CSV has
    per row, so rows from other code or a rescore could not be told apart elsewhere; the board CSV's
    train_time_s did not say on which device (and CPU threads) it was taken."""
    _trained_and_rescored_at_another_commit(tmp_path)
    cases = pd.read_csv(io.StringIO(write_report(tmp_path, "cases")), keep_default_na=False)
    assert list(cases.columns).index("case") == list(cases.columns).index("rescored_from_policy") + 1
    per_run = cases.drop_duplicates("run_id").set_index("policy")
    trained = "0123456789abcdef0123456789abcdef01234567"
    assert per_run.loc["legacy-synapse", ["code", "rescored_from_policy"]].tolist() == [trained, ""]
    assert per_run.loc["strict", ["code", "rescored_from_policy"]].tolist() == [
        f"{trained}; fedcba9876543210fedcba9876543210fedcba98", "legacy-synapse"]
    assert render(load(tmp_path), "cases", load(tmp_path, level="case")) == write_report(tmp_path, "cases")
    board = pd.read_csv(io.StringIO(write_report(tmp_path, "csv")), keep_default_na=False)
    assert set(board["train_device"]) == {"AMD EPYC 7763 x2 threads / torch 2.5.1"}  # make_record's device, its threads
    assert list(board.columns).index("train_device") == list(board.columns).index("train_time_s") + 1


def test_a_rescored_board_says_so_in_its_caption_and_csv(tmp_path):
    """Rescored boards were marked only in the Methods text: their caption says under which policy the runs were
    first scored, and the CSV's rescored_from_policy column names it per row ("" where nothing was rescored)."""
    for model in ("unet", "vmunet"):
        rec = make_record(model, seed=0)
        write_record(rec, tmp_path)
        if model == "unet":  # one of the strict board's two runs is a rescore
            rescored = make_record(model, seed=0, run_id=f"{rec['run_id']}.strict")
            write_record({**rescored, "policy": "strict", "rescored_from": rec["run_id"]}, tmp_path)
    write_record({**make_record("transunet", seed=0), "policy": "strict"}, tmp_path)
    md = write_report(tmp_path)
    legacy, strict = md[:md.index("policy strict")], md[md.index("policy strict"):]
    assert ("Rescored: scored under strict from the weights of runs trained and first scored under legacy-synapse "
            "(1 of 2 runs), evaluated again without retraining.") in strict and "Rescored" not in legacy
    assert "first scored under legacy-synapse (1 of 2" in write_report(tmp_path, "latex")
    csv = pd.read_csv(io.StringIO(write_report(tmp_path, "csv")), keep_default_na=False)
    assert dict(zip(csv["policy"] + " " + csv["model"], csv["rescored_from_policy"])) == {
        "legacy-synapse unet": "", "legacy-synapse vmunet": "", "strict unet": "legacy-synapse", "strict transunet": ""}
    # a run's first record gone: said so, not "first scored under another, legacy-synapse"
    for model in ("unet", "vmunet"):
        rec = make_record(model, seed=0)
        write_record({**rec, "run_id": f"{rec['run_id']}.strict", "policy": "strict", "rescored_from": rec["run_id"]},
                     tmp_path / "gone")
        if model == "unet":
            write_record(rec, tmp_path / "gone")
            kept = rec["run_id"]
    assert ("first scored under legacy-synapse (1 of 2 runs; the other's first record is gone), evaluated again without retraining."
            in write_report(tmp_path / "gone"))
    (tmp_path / "gone" / "records" / f"{kept}.json").unlink()
    assert ("first scored under another policy (their first records are gone), evaluated again without retraining."
            in write_report(tmp_path / "gone"))


def test_paper_columns_bold_the_runs_trained_here_not_weights_only_evaluated(tmp_path):
    """An integrity audit: weights given with --weights (trained elsewhere, maybe on this split's test
    cases) topped a board of the protocol's trainings and were bolded as its best."""
    write_record(make_record("unet", seed=0, dice=0.70, hd95=30.0), tmp_path)
    given = make_record("vmunet", seed=0, dice=0.90, hd95=10.0)
    given["weights"] = {"file": "w.pth", "sha256": "ab" * 32, "trained_by": None}
    write_record(given, tmp_path)
    md = render(load(tmp_path), "md", load(tmp_path, level="case"), columns=parse_columns("paper"))
    rows = {r.split("|")[1].strip(): r for r in md.splitlines() if r.startswith("| unet") or r.startswith("| vmunet")}
    assert "**70.00**" in rows["unet"] and "**" not in rows["vmunet (weights w.pth@abababab)"]
    assert "Bold: each column's best mean among the models trained here (not the weights only evaluated)" in md
    write_record(make_record("transunet", seed=0, dice=0.80), tmp_path / "only")  # no mix: as before
    assert "among the models trained here" not in render(load(tmp_path / "only"), "md", columns=parse_columns("paper"))


def test_the_board_csv_names_every_device_a_resumed_run_trained_on(tmp_path):
    """A run killed on one machine and resumed on another trained on both (train.devices); the board
    CSV's train_device named only the device the record was written on."""
    rec = make_record("unet", seed=0)
    rec["train"]["devices"] = ["Xeon x2 threads (AVX2) / torch 2.13.0", "EPYC x16 threads (AVX2) / torch 2.13.0"]
    write_record(rec, tmp_path)
    write_record(make_record("unet", seed=1), tmp_path)  # older record: no train.devices, its device
    board = pd.read_csv(io.StringIO(write_report(tmp_path, "csv")), keep_default_na=False)
    # one spelling of a machine (records.short_fingerprint): the older record's device as train.devices say theirs
    assert board["train_device"].tolist() == ["AMD EPYC 7763 x2 threads / torch 2.5.1; EPYC x16 threads (AVX2) / "
                                              "torch 2.13.0; Xeon x2 threads (AVX2) / torch 2.13.0"]
    assert load(tmp_path)["train_devices"].isna().tolist() == [False, True]
    one = make_record("unet", seed=2)
    one["train"]["devices"] = ["Xeon x2 threads (AVX2) / torch 2.13.0"]  # never moved: said as every record says it
    write_record(one, tmp_path)
    assert pd.isna(load(tmp_path).set_index("seed").loc[2, "train_devices"])


def test_a_tex_cells_minus_signs_are_those_opening_a_number_after_a_space_or_bracket():
    """_cell: a number's hyphen becomes a minus at the start, after a space, "[" or "(" (a CI's second end, a
    difference in brackets, ".5"); inside a name or after "=" it stays a hyphen."""
    from bench.report.tables import _cell

    assert _cell("0.50 [-0.30, -0.10]") == "0.50 [$-$0.30, $-$0.10]"
    assert _cell("1.2 (-0.05)") == "1.2 ($-$0.05)" and _cell("-.5") == "$-$.5"
    assert _cell("unet-2 lr=-1 x-0.5 -a") == "unet-2 lr=-1 x-0.5 -a"


def test_only_characters_beyond_latin_1_are_warned_of_for_pdflatex():
    """warn_outside_latin1: T1-encoded pdflatex sets Latin-1 ("Müller", "ÿ"); U+0100 on is beyond it."""
    import warnings

    from bench.report.tables import warn_outside_latin1

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_outside_latin1("Müller ÿ é")
    with pytest.warns(UserWarning, match=r"outside Latin-1 \(Ā\) that pdflatex cannot set"):
        warn_outside_latin1("Müller Ā")


def test_a_boards_counts_and_training_devices_from_its_runs_rows():
    """The board helpers on a few run rows: cases over a cross-validation's folds summed (the most a run of
    a split scored), runs' counts "2/3" only where they differ (a record without one left out) and read
    back, and every device the rows that trained trained on (not given weights')."""
    import math

    from bench.report.boards import _cases_scored, _differing, _train_devices, per_run

    folds = pd.DataFrame({"split": ["f0", "f0", "f1"], "n_cases": [3, 1, 2]})
    assert _cases_scored(folds) == 5 and _cases_scored(folds.drop(columns="split")) == 3
    assert _differing(pd.Series([3, 2, 3.0, math.nan])) == "2/3" and _differing(pd.Series([2, 2.0, math.nan])) == ""
    assert per_run(pd.Series({"n_cases": 5, "n_cases_per_run": "2/3"}), "n_cases") == [2, 3]
    assert per_run(pd.Series({"n_cases": 5.0, "n_cases_per_run": ""}), "n_cases") == [5]
    assert per_run(pd.Series({"n_train": math.nan}), "n_train") == [] and per_run(pd.Series(dtype=object), "n_train") == []
    runs = pd.DataFrame({"device": ["cpu: A", "cpu: B", "cuda: H100"], "weights": [None, None, "w.pth"],
                         "train_devices": ["cpu: C; cpu: A", None, None]})
    assert _train_devices(runs) == "cpu: A; cpu: B; cpu: C"  # the given weights' run trained nowhere here
    assert _train_devices(runs.drop(columns=["weights", "train_devices"])) == "cpu: A; cpu: B; cuda: H100"
    assert _train_devices(runs.drop(columns="device")) == ""
