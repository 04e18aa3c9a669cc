"""results/published.csv (the papers' own numbers) loads, is tidy, and holds the key published values."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.published import COLUMNS, DEFAULT_PATH, load_published

OUR_MODELS = ["unet", "transunet", "swin_unet", "vmunet", "vmunet_v2", "lightm_unet"]
VMUNET_T1 = "VM-UNet (arXiv:2402.02491v1) Table 1"
VMUNET_T2 = "VM-UNet (arXiv:2402.02491v1) Table 2"
TRANSUNET_T1 = "TransUNet (arXiv:2102.04306v1) Table 1"
V2_T1 = "VM-UNet-V2 (arXiv:2403.09157) Table 1"


@pytest.fixture(scope="module")
def pub():
    return load_published()


def one(pub, **where):
    sel = pub
    for col, val in where.items():
        sel = sel[sel[col] == val]
    assert len(sel) == 1, (where, sel)
    return sel.iloc[0]


def test_loads_from_repo_default(pub):
    assert DEFAULT_PATH.is_file()
    # a checkout reads results/ (a wheel's copy: tests/test_packaging.py)
    root = Path(__file__).resolve().parent.parent
    assert DEFAULT_PATH == root / "results" / "published.csv"
    assert list(pub.columns) == COLUMNS
    assert len(pub) > 400
    assert pub["value"].dtype == float
    assert not pub.duplicated(["source", "model", "dataset", "metric"]).any()
    # one id per model across sources ("r50_u-net" beside "r50-u-net" split one baseline in two)
    spellings = pub.groupby(pub["model"].str.replace(r"[^a-z0-9+]", "", regex=True))["model"].unique()
    assert not spellings[spellings.map(len) > 1].any(), spellings[spellings.map(len) > 1]


def test_every_model_is_present_and_params_where_published(pub):
    assert set(OUR_MODELS) <= set(pub["model"])
    with_params = set(pub.loc[pub["metric"] == "params", "model"])
    # VM-UNet-V2's params/FLOPs/FPS table (Table 3) is not in our published table, so it has no params row; the only
    # U-Net count published (VM-UNet issue #22, about 7 M) is of another U-Net than ours (34.5 M)
    assert set(OUR_MODELS) - with_params == {"vmunet_v2", "unet"}
    assert "unet_7m" in with_params
    assert (pub.loc[pub["metric"] == "params", "unit"] == "M").all()
    assert (pub.loc[pub["metric"] == "flops", "unit"] == "G").all()
    cost = pub[pub["metric"].isin(["params", "flops"])]
    assert not cost["dataset"].isin(["synapse", "isic17", "isic18"]).any()


def test_vmunet_flops_are_third_party_not_thop(pub):
    # The VM-UNet paper tabulates no FLOPs; thop's 4.11 G at 256^2 is a measurement, not a published number.
    flops = pub[(pub["model"] == "vmunet") & (pub["metric"] == "flops")]
    assert flops["value"].tolist() == [6.52]
    assert flops["convention"].tolist() == ["unknown"]
    assert not (flops["value"].round(2) == 4.11).any()


def test_synapse_spot_checks(pub):
    tu = dict(source=TRANSUNET_T1, model="transunet", dataset="synapse")
    assert one(pub, **tu, metric="dice")["value"] == 77.48
    assert one(pub, **tu, metric="hd95")["value"] == 31.69
    # printed as "mm", computed by medpy without a spacing: voxels of the 512x512xD grid (TransUNet's test_single_volume)
    assert (pub.loc[(pub["dataset"] == "synapse") & (pub["metric"] == "hd95"), "unit"] == "voxels").all()
    assert one(pub, **tu, metric="dice:pancreas")["value"] == 55.86
    vm = dict(source=VMUNET_T2, model="vmunet", dataset="synapse")
    assert one(pub, **vm, metric="dice")["value"] == 81.08
    assert one(pub, **vm, metric="hd95")["value"] == 19.21
    assert one(pub, **vm, metric="dice")["convention"] == "legacy-synapse"
    organs = pub[(pub["source"] == VMUNET_T2) & (pub["model"] == "vmunet") & pub["metric"].str.startswith("dice:")]
    assert len(organs) == 8 and round(organs["value"].mean(), 2) == 81.08
    swin = pub[(pub["model"] == "swin_unet") & (pub["dataset"] == "synapse") & (pub["metric"] == "dice")]
    assert set(swin["value"]) == {79.13}
    assert one(pub, source=VMUNET_T2, model="uctransnet", dataset="synapse", metric="hd95")["value"] == 26.75


def test_isic_and_lightm_spot_checks(pub):
    assert one(pub, source=VMUNET_T1, model="vmunet", dataset="isic17", metric="iou")["value"] == 80.23
    assert one(pub, source=VMUNET_T1, model="vmunet", dataset="isic18", metric="dice")["value"] == 89.71
    assert one(pub, source=VMUNET_T1, model="vmunet", dataset="isic18", metric="iou")["convention"] == "legacy-isic"
    assert one(pub, source=V2_T1, model="vmunet_v2", dataset="isic18", metric="iou")["value"] == 81.37
    assert one(pub, source=V2_T1, model="vmunet_v2", dataset="isic17", metric="sen")["value"] == 91.89
    lm = pub[(pub["model"] == "lightm_unet") & (pub["metric"] == "params")]
    assert sorted(lm["value"]) == [1.09, 1.87]
    assert lm["note"].str.contains("5.01 M").any()
    assert one(pub, model="transunet", metric="flops", convention="thop MACs at 1x3x224x224")["value"] == 24.73


def test_each_number_names_the_recipe_it_was_trained_under(pub):
    """Compared like with like only where the paper's recipe is one of our protocols."""
    recipe = lambda **w: one(pub, metric="dice", **w)["protocol"]  # noqa: E731
    assert recipe(source=TRANSUNET_T1, model="transunet", dataset="synapse") == "synapse"
    assert recipe(source=VMUNET_T2, model="transunet", dataset="synapse") == "synapse"  # copied from TransUNet
    assert recipe(source=VMUNET_T2, model="swin_unet", dataset="synapse") == "synapse_swin"
    assert recipe(source=VMUNET_T2, model="unet", dataset="synapse") == "synapse_swin"  # Swin-Unet issue #14
    assert recipe(source=VMUNET_T2, model="vmunet", dataset="synapse") == "synapse_vmunet"
    assert recipe(source=VMUNET_T1, model="vmunet", dataset="isic17") == "isic17"
    for year in ("isic17", "isic18"):  # one model trained on ISIC17+18 merged (train_isic_all.py)
        assert recipe(source=V2_T1, model="vmunet_v2", dataset=year) == "isic_all"
    assert recipe(source="TransUNet (arXiv:2102.04306v1) Table 5", model="transunet", dataset="acdc") == "acdc"
    # VM-UNet's ISIC U-Net has about 7 M parameters (its issue #22): not our 34.5 M unet
    assert not ((pub["model"] == "unet") & pub["dataset"].isin(["isic17", "isic18"])).any()
    assert one(pub, source=VMUNET_T1, model="unet_7m", dataset="isic17", metric="dice")["value"] == 86.99
    assert one(pub, model="lightm_unet", dataset="lits", metric="dice")["value"] == 84.6
    assert recipe(model="lightm_unet", dataset="lits") == "lightm_unet_3d"  # their 3-D configuration
    assert recipe(model="lightm_unet", dataset="montgomery_shenzhen") == "lightm_unet_2d"


BAD_ROWS = [
    ("S,unet,synapse,dice,abc,%,unknown,,", "value"),
    ("S,unet,synapse,dice,inf,%,unknown,,", "value"),
    ("S,unet,synapse,dsc,77.1,%,unknown,,", "metric"),
    ("S,unet,synapse,dice:,77.1,%,unknown,,", "metric"),
    ("S,unet,synapse,dice,77.1,percent,unknown,,", "unit"),
    ("S,unet,synapse,dice,77.1,%,unknown,synapse_swim,", "protocol"),
    ("S,unet,synapse,dice,77.1,%", "fields"),
]


@pytest.mark.parametrize("bad,what", BAD_ROWS)
def test_bad_row_names_file_and_row(tmp_path, bad, what):
    path = tmp_path / "pub.csv"
    good = '"Paper, Table 1",unet,synapse,dice,76.85,%,legacy-synapse,synapse_swin,"quoted, with comma"'
    hd95 = good.replace("dice,", "hd95,").replace("%", "mm")
    path.write_text("\n".join([",".join(COLUMNS), good, hd95, bad]) + "\n", encoding="utf-8")
    with pytest.raises(BenchError) as exc:
        load_published(path)
    msg = str(exc.value)
    assert str(path) in msg and "row 3 (line 4)" in msg and what in msg


def test_bad_header_and_missing_file(tmp_path):
    path = tmp_path / "pub.csv"
    path.write_text("source,model,value\nS,unet,1\n", encoding="utf-8")
    with pytest.raises(BenchError, match="header"):
        load_published(path)
    with pytest.raises(BenchError, match="nope.csv"):
        load_published(tmp_path / "nope.csv")


def test_good_tmp_file_round_trips(tmp_path):
    path = tmp_path / "pub.csv"
    path.write_text(",".join(COLUMNS) + '\n"Paper, Table 1",unet,,params,7,M,unknown,,"about 7 M, approx"\n',
                    encoding="utf-8")
    df = load_published(path)
    assert df.iloc[0]["source"] == "Paper, Table 1" and df.iloc[0]["value"] == 7.0 and df.iloc[0]["dataset"] == ""


def test_a_file_saved_by_a_spreadsheet_with_a_byte_order_mark_loads(tmp_path):
    # "CSV UTF-8" from Excel starts with a BOM: the header read as '\ufeffsource' and was refused
    path = tmp_path / "pub.csv"
    path.write_text(",".join(COLUMNS) + '\nPaper,unet,,params,7,M,unknown,,\n', encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_published(path).iloc[0]["source"] == "Paper"
    path.write_text(",".join(COLUMNS) + '\nPaper,unet,,params,7,M,unknown,,\n', encoding="utf-16")  # "Unicode text"
    assert load_published(path).iloc[0]["source"] == "Paper"
    path.write_bytes(path.read_bytes()[2:])  # UTF-16 without its mark: another encoding, named as such
    with pytest.raises(BenchError, match=rf"{path}: cannot read it as published numbers \(CSV\): not UTF-8 text"):
        load_published(path)


def test_rows_whose_authors_chose_their_checkpoint_on_the_test_set_say_so(pub):
    """VM-UNet and VM-UNet-V2 kept the checkpoint with the lowest loss on their test sets; our
    recipes evaluate the lowest-lr epoch instead. Ours − published holds that choice too: the
    published table's Note says so on each such row."""
    from bench.protocol import load_protocol

    rows = pub[pub["protocol"].astype(bool)]
    chosen = rows[[load_protocol(p).train.select == "lr_min" for p in rows["protocol"]]]
    assert set(chosen["protocol"]) == {"isic17", "isic18", "isic_all", "polyp"}
    said = chosen["note"].str.contains("kept the checkpoint with the lowest loss on the (?:five )?test set", regex=True)
    assert said.all()
