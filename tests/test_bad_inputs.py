"""Every CLI this project ships for data (mvm-ingest, mvm-audit, mvm-synth, mvm-probe, mvm-report)
walked through a table of bad inputs: each gives the documented exit code (2 usage, 1 failure)
and a message, and no traceback reaches the user. (mvm-train has its own table in the trainer
tests.)

A case is (cli, arguments, exit code, words the message must hold). Arguments may name
placeholders that the `world` fixture fills in: {root} a good synthetic dataroot, {bad_json} a
dataroot whose scene.json is cut short, {shards} a good shard folder, {flipped} one with a flipped
byte, {escape} one whose manifest names ../outside.tar, {nomanifest} a folder without manifest,
{badmanifest} one whose manifest is not JSON, {weird} one whose manifest's scenes are not records,
{listless} one whose only clip has a JSON list as metadata and a broken video, {file} a plain file, {empty} an empty folder,
{link} a symlink to an empty folder, {tmp} a fresh folder for outputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile

import pytest
from _ingest_helpers import VERSION
from _train_helpers import write_shards
from click.testing import CliRunner

from mvm.ingest.audit_cli import main as audit_main
from mvm.ingest.cli import ingest_main
from mvm.probe.cli import main as probe_main
from mvm.slurm.report import main as report_main
from mvm.synth.cli import main as synth_main

CLIS = {
    "mvm-ingest": ingest_main,
    "mvm-audit": audit_main,
    "mvm-synth": synth_main,
    "mvm-probe": probe_main,
    "mvm-report": report_main,
}
INGEST = ["--dataroot", "{root}", "--version", VERSION, "--scenes", "all", "--out", "{tmp}/out"]
PROBE = ["--checkpoint", "{empty}", "--val-shards", "{shards}", "--out", "{tmp}/probe"]

CASES = [
    ("mvm-ingest", [*INGEST, "--clip-len", "-1"], 2, "--clip-len"),
    ("mvm-ingest", [*INGEST, "--clip-len", "eight"], 2, "--clip-len"),
    ("mvm-ingest", [*INGEST, "--size", "0x0"], 2, "--size"),
    ("mvm-ingest", [*INGEST, "--size", "144x"], 2, "--size"),
    ("mvm-ingest", [*INGEST, "--part", "3/2"], 2, "--part"),
    ("mvm-ingest", [*INGEST, "--workers", "0"], 2, "--workers"),
    ("mvm-ingest", [*INGEST, "--crf", "99"], 2, "--crf"),
    ("mvm-ingest", [*INGEST, "--seed", "-1"], 2, "--seed"),
    ("mvm-ingest", [*INGEST, "--shard-clips", "0"], 2, "--shard-clips"),
    ("mvm-ingest", [*INGEST, "--max-gap-ms", "0"], 2, "--max-gap-ms"),
    ("mvm-ingest", [*INGEST, "--scenes", " "], 2, "empty"),
    ("mvm-ingest", [*INGEST, "--scenes", "@{tmp}/none.txt"], 2, "does not exist"),
    ("mvm-ingest", [*INGEST, "--version", "v9"], 2, "version folder"),
    ("mvm-ingest", [*INGEST, "--dataroot", "{tmp}/nowhere"], 2, "does not exist"),
    ("mvm-ingest", [*INGEST, "--out", "{file}"], 2, "is a file"),
    ("mvm-ingest", [*INGEST, "--out", "{link}"], 1, "symlink"),
    ("mvm-ingest", [*INGEST, "--out", "{badmanifest}"], 2, "not valid JSON"),
    ("mvm-ingest", [*INGEST, "--finalize"], 1, "no part ledgers"),
    ("mvm-ingest", [*INGEST, "--clip-len", "1000"], 1, "no clip was written"),
    ("mvm-ingest", [*INGEST, "--dataroot", "{bad_json}"], 1, "scene.json is not valid JSON (line"),
    ("mvm-audit", ["{tmp}/nowhere"], 2, "does not exist"),
    ("mvm-audit", ["{file}"], 2, "is a file"),
    ("mvm-audit", ["{nomanifest}", "--out", "{tmp}/r"], 1, "has no manifest.json"),
    ("mvm-audit", ["{badmanifest}", "--out", "{tmp}/r"], 1, "not valid JSON (line 1"),
    ("mvm-audit", ["{escape}", "--out", "{tmp}/r"], 1, "../outside.tar"),
    ("mvm-audit", ["{weird}", "--out", "{tmp}/r"], 1, "scenes [{name, token, clips}]"),
    ("mvm-audit", ["{listless}", "--out", "{tmp}/r"], 1, "json is not an object"),
    (
        "mvm-audit",
        ["{listless}", "--against", "{weird}", "--out", "{tmp}/r"],
        1,
        "are not {name, token, clips}",
    ),
    ("mvm-audit", ["{shards}", "--psnr-clips", "-1"], 2, "--psnr-clips"),
    ("mvm-audit", ["{shards}", "--min-psnr", "nan"], 2, "--min-psnr"),
    ("mvm-audit", ["{shards}", "--against", "{tmp}/nowhere"], 2, "--against"),
    ("mvm-audit", ["{shards}", "--out", "{file}"], 2, "is a file"),
    ("mvm-audit", ["{shards}", "--out", "{link}"], 1, "symlink"),
    ("mvm-synth", ["--out", "{tmp}/s", "--scenes", "0"], 2, "--scenes"),
    ("mvm-synth", ["--out", "{tmp}/s", "--width", "100"], 2, "--width"),
    ("mvm-synth", ["--out", "{tmp}/s", "--frames-per-scene", "0"], 2, "--frames-per-scene"),
    ("mvm-synth", ["--out", "{tmp}/s", "--drop-rate", "0.9"], 2, "--drop-rate"),
    ("mvm-synth", ["--out", "{file}"], 2, "is a file"),
    ("mvm-synth", ["--out", "{shards}"], 1, "refus"),
    ("mvm-synth", ["--out", "{link}"], 1, "symlink"),
    ("mvm-probe", [*PROBE, "--train-shards", "{shards}", "--batch-size", "0"], 2, "--batch-size"),
    ("mvm-probe", [*PROBE, "--train-shards", "{shards}", "--seeds", "0"], 2, "--seeds"),
    ("mvm-probe", [*PROBE, "--train-shards", "{nomanifest}"], 2, "has no manifest.json"),
    ("mvm-probe", [*PROBE, "--train-shards", "{escape}"], 2, "../outside.tar"),
    ("mvm-probe", [*PROBE, "--train-shards", "{flipped}"], 1, "does not match its sha256"),
    ("mvm-probe", [*PROBE, "--train-shards", "{listless}"], 1, "metadata lacks"),
    ("mvm-probe", [*PROBE, "--train-shards", "{tmp}/nowhere/shard-000000.tar"], 2, "missing"),
    ("mvm-report", ["{tmp}/nowhere", "--out", "{tmp}/rep"], 2, "does not exist"),
    ("mvm-report", ["{empty}", "--out", "{tmp}/rep"], 1, "no run"),
    ("mvm-report", ["{empty}", "--out", "{file}"], 2, "is a file"),
]


@pytest.fixture(scope="module")
def world(dataroot, tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("world")
    root = dataroot
    bad_json = base / "bad_json"
    shutil.copytree(root, bad_json)
    scene = bad_json / VERSION / "scene.json"
    scene.write_bytes(scene.read_bytes()[:-30])
    shards = write_shards(base / "shards" / "val", [2], clip_len=4, size=(32, 32))
    flipped = write_shards(base / "flipped" / "train", [2, 2], clip_len=4, size=(32, 32), seed=1)
    data = bytearray((flipped / "shard-000001.tar").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "shard-000001.tar").write_bytes(bytes(data))
    escape = write_shards(base / "escape" / "train", [2], clip_len=4, size=(32, 32), seed=2)
    shutil.copy(escape / "shard-000000.tar", escape.parent / "outside.tar")
    manifest = json.loads((escape / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../outside.tar"
    (escape / "manifest.json").write_text(json.dumps(manifest))
    weird = write_shards(base / "weird", [1], clip_len=4, size=(32, 32), seed=3)
    listless = write_shards(base / "listless", [1], clip_len=4, size=(32, 32), seed=4)
    with tarfile.open(listless / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in (("scene-0000-0000.json", b"[]"), ("scene-0000-0000.mp4", b"not a video")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    for folder, scenes in ((weird, [1]), (listless, [])):
        manifest = json.loads((folder / "manifest.json").read_text())
        data = (folder / "shard-000000.tar").read_bytes()
        manifest["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        manifest["config"].update(
            dataroot="/nowhere",
            version=VERSION,
            stride=1,
            max_gap_ms=125,
            depth_patch=16,
            depth_max_offset_ms=50,
        )
        manifest.update(scenes=scenes, rejects=[])
        (folder / "manifest.json").write_text(json.dumps(manifest))
    (base / "nomanifest").mkdir()
    shutil.copy(shards / "shard-000000.tar", base / "nomanifest")
    badmanifest = base / "badmanifest"
    badmanifest.mkdir()
    (badmanifest / "manifest.json").write_text('{"format": ')
    (base / "file").write_text("not a folder\n")
    (base / "empty").mkdir()
    (base / "linked").mkdir()
    (base / "link").symlink_to(base / "linked")
    made = {"root": root, "bad_json": bad_json, "shards": shards, "flipped": flipped, "escape": escape}
    made.update(weird=weird, listless=listless)
    plain = ["nomanifest", "badmanifest", "file", "empty", "link"]
    return {name: str(path) for name, path in made.items()} | {name: str(base / name) for name in plain}


@pytest.mark.parametrize(
    ("cli", "args", "exit_code", "words"), CASES, ids=[f"{c[0]}:{' '.join(c[1][-2:])}" for c in CASES]
)
def test_bad_input_gives_a_message_and_exit_code_without_traceback(
    world, tmp_path, cli, args, exit_code, words
):
    filled = [arg.format(tmp=tmp_path, **world) for arg in args]
    result = CliRunner().invoke(CLIS[cli], filled)
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{cli} raised {type(result.exception).__name__}: {result.exception}"
    )
    assert "Traceback" not in output
    assert result.exit_code == exit_code, output
    assert "".join(words.split()) in "".join(output.split()), output  # rich may wrap long lines
    assert not (tmp_path / "nowhere").exists()
