"""Image outputs: metadata round trips, A1111 text, atomic writes, output naming and prompts files."""

from __future__ import annotations

import json
import os
import re
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from sana.errors import SanaError, UsageError
from sana.outputs import (
    EXIF_IFD,
    EXIF_IMAGE_DESCRIPTION,
    EXIF_USER_COMMENT,
    GenerationRecord,
    decode_user_comment,
    parse_a1111,
    plan_output_paths,
    prompt_slug,
    read_metadata,
    save_image,
)
from sana.prompts_file import read_prompts

# Copied from the conventions A1111 readers follow, so a drift in our own copy of it shows here.
READER_REGEX = r"""\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"""
TRAINED_ALGORITHMIC_MEDIA = b"http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def make_record(**changes) -> GenerationRecord:
    values = dict(
        prompt="a red fox in the snow, watercolor", negative_prompt="blurry", model="sana-1.6b",
        model_repo="Efficient-Large-Model/Sana_1600M_1024px_diffusers", model_revision="0123abcd", family="sana",
        seed=42, steps=20, guidance=4.5, pag=2.0, pag_layers=[8], sampler="flow-dpm", flow_shift=3.0, width=48,
        height=32, dtype="bf16", loras=[{"path": "loras/style.safetensors", "scale": 0.8, "sha256": "ab" * 32}],
        version="0.1.0", timings={"load": 1.25, "encode": 0.5, "denoise": 3.75, "decode": 0.25},
        extra={"device": "cuda:0", "images_in_batch": 1},
    )
    values.update(changes)
    return GenerationRecord(**values)


UNICODE_PROMPT = "宇宙飛行士の猫 🚀🐱, façade: «night»\nsecond line"
RECORDS = {
    "ascii": make_record(),
    "unicode": make_record(prompt=UNICODE_PROMPT, negative_prompt="ぼやけた, low quality"),
    "punctuation": make_record(prompt='a sign that says "OPEN: 9-5, daily"\nwith: colons, commas',
                               negative_prompt="text, watermark\nlogo: any", model="/models/my, sana: v2",
                               pag=0.0, pag_layers=[], loras=[]),
}


def small_image(mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, (48, 32), "navy" if mode == "RGB" else None)
    image.putpixel((3, 4), (250, 10, 10) if mode == "RGB" else (250, 10, 10, 128))
    return image


# ------------------------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp"])
@pytest.mark.parametrize("name", list(RECORDS))
def test_metadata_round_trips(tmp_path, suffix, name):
    record = RECORDS[name]
    written = save_image(small_image(), tmp_path / f"out{suffix}", record)
    assert written == tmp_path / f"out{suffix}"
    assert read_metadata(written) == record
    with Image.open(written) as image:
        assert image.size == (48, 32)
        assert image.format == {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[suffix]


@pytest.mark.parametrize("name", list(RECORDS))
def test_png_has_a1111_parameters_json_and_xmp(tmp_path, name):
    record = RECORDS[name]
    path = save_image(small_image(), tmp_path / "out.png", record)
    with Image.open(path) as image:
        texts = image.text
        assert texts["parameters"] == record.to_a1111()
        assert json.loads(texts["sana"]) == json.loads(record.to_json())
        assert TRAINED_ALGORITHMIC_MEDIA in texts["XML:com.adobe.xmp"].encode()
        # Latin-1 text goes in tEXt, anything else in iTXt (UTF-8)
        assert isinstance(texts["sana"], PngImagePlugin.iTXt) == (name == "unicode")


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
@pytest.mark.parametrize("name", ["ascii", "unicode"])
def test_exif_user_comment_and_description(tmp_path, suffix, name):
    record = RECORDS[name]
    path = save_image(small_image(), tmp_path / f"out{suffix}", record)
    with Image.open(path) as image:
        exif = image.getexif()
        comment = exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT]
        description = exif[EXIF_IMAGE_DESCRIPTION]
        assert TRAINED_ALGORITHMIC_MEDIA in image.info["xmp"]
    assert comment[:8] == (b"UNICODE\0" if name == "unicode" else b"ASCII\0\0\0")
    # UTF-16 in the byte order of the (big-endian) EXIF header, as the EXIF spec asks
    body = comment[8:].decode("utf-16-be" if name == "unicode" else "ascii")
    assert GenerationRecord.from_json(body) == record
    # Pillow hands EXIF ASCII back as Latin-1; the bytes are UTF-8
    assert description.encode("latin-1").decode("utf-8") == record.to_a1111()


def test_jpeg_of_an_rgba_image_is_written_as_rgb(tmp_path):
    path = save_image(small_image("RGBA"), tmp_path / "alpha.jpg", make_record())
    with Image.open(path) as image:
        assert image.mode == "RGB"
    assert read_metadata(path) == make_record()


# ------------------------------------------------------------------------------------------------------------------
# A1111 text
# ------------------------------------------------------------------------------------------------------------------

def test_a1111_layout_and_reader_regex():
    record = make_record()
    text = record.to_a1111()
    lines = text.split("\n")
    assert lines[0] == "a red fox in the snow, watercolor"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 20, Sampler: flow-dpm, CFG scale: 4.5, ")
    assert lines[2].endswith(", Version: sana 0.1.0")
    pairs = dict(re.findall(READER_REGEX, lines[2]))
    assert pairs == {
        "Steps": "20", "Sampler": "flow-dpm", "CFG scale": "4.5", "PAG scale": "2.0", "PAG layers": "8",
        "Seed": "42", "Size": "48x32", "Model": "sana-1.6b",
        "Model repo": "Efficient-Large-Model/Sana_1600M_1024px_diffusers", "Model revision": "0123abcd",
        "Family": "sana", "Flow shift": "3.0", "Dtype": "bf16", "LoRAs": '"loras/style.safetensors:0.8"',
        "Version": "sana 0.1.0",
    }
    parsed = parse_a1111(text)
    assert parsed["Prompt"] == record.prompt and parsed["Negative prompt"] == "blurry"
    assert parsed["LoRAs"] == "loras/style.safetensors:0.8"  # JSON-unquoted


def test_a1111_values_with_commas_colons_and_newlines_are_json_strings():
    record = make_record(model="/models/my, sana: v2", dtype="bf16\nx", sampler='"quoted"')
    last_line = record.to_a1111().split("\n")[-1]
    pairs = dict(re.findall(READER_REGEX, last_line))
    assert pairs["Model"] == json.dumps("/models/my, sana: v2")
    assert pairs["Dtype"] == json.dumps("bf16\nx") and "\n" not in last_line
    assert pairs["Sampler"] == json.dumps('"quoted"')
    parsed = parse_a1111(record.to_a1111())
    assert (parsed["Model"], parsed["Dtype"], parsed["Sampler"]) == ("/models/my, sana: v2", "bf16\nx", '"quoted"')


@pytest.mark.parametrize("name", list(RECORDS))
def test_a1111_text_alone_gives_back_the_settings(name):
    record = RECORDS[name]
    back = GenerationRecord.from_a1111(record.to_a1111())
    for key in ("prompt", "negative_prompt", "model", "model_repo", "model_revision", "family", "seed", "steps",
                "guidance", "pag", "pag_layers", "sampler", "flow_shift", "width", "height", "dtype", "version"):
        assert getattr(back, key) == getattr(record, key), key
    assert back.loras == [{"path": lora["path"], "scale": lora["scale"]} for lora in record.loras]


def test_a1111_without_negative_or_parameter_line():
    assert parse_a1111("just a prompt\non two lines") == {"Prompt": "just a prompt\non two lines",
                                                         "Negative prompt": ""}
    record = make_record(negative_prompt="")
    assert "Negative prompt" not in record.to_a1111()
    assert parse_a1111(record.to_a1111())["Negative prompt"] == ""


# ------------------------------------------------------------------------------------------------------------------
# The JSON record
# ------------------------------------------------------------------------------------------------------------------

def test_from_json_ignores_unknown_keys_and_fills_defaults():
    text = json.dumps({"prompt": "a cat", "seed": 7, "from_a_newer_version": {"x": 1}})
    record = GenerationRecord.from_json(text)
    assert (record.prompt, record.seed, record.pag, record.loras, record.steps) == ("a cat", 7, 0.0, [], None)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"seed": 1}', '{"prompt": "x", "seed": "seven"}',
                                  '{"prompt": "x", "steps": 2.5}', '{"prompt": "x", "loras": ["a"]}'],
                         ids=["not-json", "not-object", "no-prompt", "bad-seed", "fractional-steps", "bad-loras"])
def test_from_json_rejects_bad_records(text):
    with pytest.raises(SanaError):
        GenerationRecord.from_json(text)


# ------------------------------------------------------------------------------------------------------------------
# Reading other tools' files
# ------------------------------------------------------------------------------------------------------------------

FOREIGN_PARAMETERS = (
    "masterpiece, a castle on a hill\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567, Size: 832x1216, "
    'Model hash: 4a3c2b1d, Model: someCheckpoint_v10, Lora hashes: "detail: 0123456789ab", Version: v1.10.1'
)


def test_reads_a_png_with_only_a1111_parameters(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", FOREIGN_PARAMETERS)
    path = tmp_path / "foreign.png"
    small_image().save(path, pnginfo=info)
    record = read_metadata(path)
    assert record.prompt == "masterpiece, a castle on a hill"
    assert record.negative_prompt == "lowres, bad anatomy"
    assert (record.steps, record.guidance, record.seed, record.width, record.height) == (28, 7.0, 1234567, 832, 1216)
    # another tool's sampler and model cannot drive our pipelines: kept for display, not for replay
    assert record.sampler is None and record.model is None
    assert record.extra["a1111"]["Sampler"] == "DPM++ 2M"
    assert record.extra["a1111"]["Model"] == "someCheckpoint_v10"
    assert record.extra["a1111"]["Lora hashes"] == "detail: 0123456789ab"


def test_reads_parameters_stored_after_the_image_data(tmp_path):
    path = tmp_path / "late.png"
    small_image().save(path)
    data = path.read_bytes()
    iend = data.rindex(b"IEND") - 4  # back over IEND's length field
    body = b"parameters\0a late prompt\nSteps: 3, CFG scale: 2, Seed: 4"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    path.write_bytes(data[:iend] + chunk + data[iend:])
    record = read_metadata(path)
    assert (record.prompt, record.steps, record.guidance, record.seed) == ("a late prompt", 3, 2.0, 4)


def test_reads_a1111_text_from_a_jpeg_user_comment(tmp_path):
    exif = Image.Exif()
    # little-endian UTF-16 without a BOM, as some writers do despite a big-endian header
    exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"UNICODE\0" + FOREIGN_PARAMETERS.encode("utf-16-le")
    path = tmp_path / "foreign.jpg"
    small_image().save(path, exif=exif.tobytes())
    record = read_metadata(path)
    assert (record.prompt, record.seed, record.steps) == ("masterpiece, a castle on a hill", 1234567, 28)


@pytest.mark.parametrize("encoding", ["utf-16-be", "utf-16-le", "utf-16"])
def test_user_comment_decoding_finds_the_byte_order(encoding):
    text = '{"prompt": "猫 and a cat"}'
    assert decode_user_comment(b"UNICODE\0" + text.encode(encoding), big_endian=True) == text
    assert decode_user_comment(b"UNICODE\0" + text.encode(encoding), big_endian=False) == text
    assert decode_user_comment(b"ASCII\0\0\0" + b"plain", big_endian=True) == "plain"


def test_camera_description_is_not_taken_for_a_prompt(tmp_path):
    exif = Image.Exif()
    exif[EXIF_IMAGE_DESCRIPTION] = "OLYMPUS DIGITAL CAMERA"
    path = tmp_path / "photo.jpg"
    small_image().save(path, exif=exif.tobytes())
    with pytest.raises(SanaError, match="has no generation metadata"):
        read_metadata(path)


def test_damaged_json_falls_back_to_the_a1111_copy(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", make_record().to_a1111())
    info.add_text("sana", "{not json")
    path = tmp_path / "damaged.png"
    small_image().save(path, pnginfo=info)
    assert read_metadata(path).seed == 42
    only_json = PngImagePlugin.PngInfo()
    only_json.add_text("sana", "{not json")
    small_image().save(path, pnginfo=only_json)
    with pytest.raises(SanaError, match="not valid JSON"):
        read_metadata(path)


def test_read_errors_are_sana_errors(tmp_path):
    with pytest.raises(SanaError, match="not found"):
        read_metadata(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(SanaError, match="not an image"):
        read_metadata(tmp_path / "text.png")
    small_image().save(tmp_path / "plain.png")
    with pytest.raises(SanaError, match="has no generation metadata"):
        read_metadata(tmp_path / "plain.png")
    with pytest.raises(SanaError, match="not a file"):
        read_metadata(tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# Writing: overwrite rules and atomicity
# ------------------------------------------------------------------------------------------------------------------

def test_save_refuses_to_overwrite_unless_forced(tmp_path):
    path = tmp_path / "keep.png"
    path.write_bytes(b"precious")
    with pytest.raises(SanaError) as caught:
        save_image(small_image(), path, make_record())
    assert str(caught.value) == f"{path} exists; use --force to overwrite or choose another -o"
    assert path.read_bytes() == b"precious"
    save_image(small_image(), path, make_record(seed=5), force=True)
    assert read_metadata(path).seed == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_the_package_keeps_every_name_the_code_imports():
    import sana.outputs as outputs

    for name in ("GenerationRecord", "file_sha256", "plan_output_paths", "read_metadata", "save_image",
                 "image_format", "exists_error", "encode_user_comment", "FORMATS", "XMP_PACKET", *outputs.__all__):
        assert hasattr(outputs, name), name


@pytest.mark.parametrize("name", ["out.gif", "out.tiff", "out"])
def test_unknown_suffix_is_a_usage_error(tmp_path, name):
    with pytest.raises(UsageError):
        save_image(small_image(), tmp_path / name, make_record())
    assert list(tmp_path.iterdir()) == []


def test_save_creates_missing_directories_and_uses_ordinary_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = save_image(small_image(), tmp_path / "a" / "b" / "out.webp", make_record())
    finally:
        os.umask(old_umask)
    assert path.is_file()
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_failed_save_leaves_no_file(tmp_path, monkeypatch, failure, suffix):
    def save_half_then_fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half an image")
        raise failure

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    with pytest.raises(type(failure)):
        save_image(small_image(), tmp_path / f"out{suffix}", make_record())
    assert list(tmp_path.iterdir()) == []


def test_failed_forced_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "old.png"
    save_image(small_image(), path, make_record(seed=1))
    before = path.read_bytes()

    def fail(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError):
        save_image(small_image(), path, make_record(seed=2), force=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


def test_a_file_appearing_during_the_save_is_not_clobbered(tmp_path, monkeypatch):
    path = tmp_path / "race.png"
    original_save = Image.Image.save

    def save_while_another_process_writes(self, fp, *args, **kwargs):
        path.write_bytes(b"someone else's image")
        return original_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_while_another_process_writes)
    with pytest.raises(SanaError, match="exists; use --force"):
        save_image(small_image(), path, make_record())
    assert path.read_bytes() == b"someone else's image"
    assert [p.name for p in tmp_path.iterdir()] == ["race.png"]


# ------------------------------------------------------------------------------------------------------------------
# Naming
# ------------------------------------------------------------------------------------------------------------------

def test_prompt_slug():
    assert prompt_slug("A Red Fox, in the SNOW!") == "a-red-fox-in-the-snow"
    assert prompt_slug("Café crème") == "cafe-creme"
    assert prompt_slug("宇宙飛行士の猫") == "image"
    long = prompt_slug("word " * 30)
    assert len(long) <= 40 and not long.endswith("-") and long.startswith("word-word")
    assert prompt_slug("x" * 100) == "x" * 40


def test_default_names_in_a_directory(tmp_path):
    paths = plan_output_paths(str(tmp_path) + "/", prompt="A red fox", seeds=[7, 8], force=False)
    assert paths == [tmp_path / "a-red-fox-7.png", tmp_path / "a-red-fox-8.png"]
    existing = plan_output_paths(str(tmp_path), prompt="A red fox", seeds=[7], ext=".webp", force=False)
    assert existing == [tmp_path / "a-red-fox-7.webp"]


def test_default_names_never_overwrite(tmp_path):
    (tmp_path / "a-cat-1.png").write_bytes(b"old")
    with pytest.raises(SanaError, match="a-cat-1.png exists; use --force"):
        plan_output_paths(str(tmp_path), prompt="a cat", seeds=[1, 2], force=False)
    # names never depend on the disk (a rerun plans the same ones): the same seed twice in a batch gets "-2"
    assert plan_output_paths(str(tmp_path), prompt="a cat", seeds=[3, 3], force=False) == [
        tmp_path / "a-cat-3.png", tmp_path / "a-cat-3-2.png"]
    assert plan_output_paths(str(tmp_path), prompt="a cat", seeds=[1, 1], force=True) == [
        tmp_path / "a-cat-1.png", tmp_path / "a-cat-1-2.png"]


def test_default_directory_is_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = plan_output_paths(None, prompt="a dog", seeds=[5, 6], force=False)
    assert [p.resolve() for p in paths] == [tmp_path / "a-dog-5.png", tmp_path / "a-dog-6.png"]
    (tmp_path / "a-dog-5.png").write_bytes(b"old")
    with pytest.raises(SanaError, match="a-dog-5.png exists"):
        plan_output_paths(None, prompt="a dog", seeds=[5, 6], force=False)


def test_missing_directory_is_not_created_by_planning(tmp_path):
    target = tmp_path / "new" / "dir"
    paths = plan_output_paths(str(target) + "/", prompt="x", seeds=[1], force=False)
    assert paths == [target / "x-1.png"] and not target.exists()
    save_image(small_image(), paths[0], make_record())
    assert paths[0].is_file()


def test_explicit_file_paths(tmp_path):
    out = tmp_path / "fox.jpg"
    assert plan_output_paths(str(out), prompt="p", seeds=[9], force=False) == [out]
    # several images: numbered by position, the file's suffix winning over ext
    assert plan_output_paths(str(out), prompt="p", seeds=[9, 10, 11], ext=".png", force=False) == [
        tmp_path / "fox-1.jpg", tmp_path / "fox-2.jpg", tmp_path / "fox-3.jpg"]
    # later prompts of a run continue the numbering
    assert plan_output_paths(str(out), prompt="p", seeds=[4], force=False, index_start=3) == [tmp_path / "fox-4.jpg"]


def test_explicit_file_that_exists_is_an_error_unless_forced(tmp_path):
    out = tmp_path / "fox.png"
    out.write_bytes(b"old")
    with pytest.raises(SanaError, match=re.escape(f"{out} exists; use --force")):
        plan_output_paths(str(out), prompt="p", seeds=[1], force=False)
    assert plan_output_paths(str(out), prompt="p", seeds=[1], force=True) == [out]
    (tmp_path / "fox-2.png").write_bytes(b"old")
    with pytest.raises(SanaError, match="fox-2.png exists"):
        plan_output_paths(str(out), prompt="p", seeds=[1, 2], force=False)


@pytest.mark.parametrize("out", ["picture.gif", "picture"])
def test_explicit_file_needs_an_image_suffix(tmp_path, out):
    with pytest.raises(UsageError):
        plan_output_paths(str(tmp_path / out), prompt="p", seeds=[1], force=False)


def test_directory_slash_on_an_existing_file_is_an_error(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UsageError, match="is a file"):
        plan_output_paths(str(tmp_path / "file") + "/", prompt="p", seeds=[1], force=False)


# ------------------------------------------------------------------------------------------------------------------
# Prompts files
# ------------------------------------------------------------------------------------------------------------------

def test_plain_prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\na red fox\n\n   a lighthouse, at dusk: calm   \n#skip\n{not first}\n",
                    encoding="utf-8")
    jobs = read_prompts(path)
    assert [(job.prompt, job.overrides, job.line) for job in jobs] == [
        ("a red fox", {}, 2), ("a lighthouse, at dusk: calm", {}, 4), ("{not first}", {}, 6)]


def test_jsonl_prompts_file_with_clip_settings(tmp_path):
    path = tmp_path / "clips.jsonl"
    lines = [{"prompt": "a fox runs", "frames": 33, "fps": 12, "motion_score": 20, "image": "fox.png"},
             {"prompt": "waves", "motion_score": "none"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    jobs = read_prompts(path)
    assert jobs[0].overrides == {"frames": 33, "fps": 12.0, "motion_score": "20", "image": "fox.png"}
    assert jobs[1].overrides == {"motion_score": "none"}
    for bad, message in (({"frames": 0}, "frames"), ({"fps": 0}, "fps"), ({"motion_score": "lots"}, "motion_score"),
                         ({"image": 3}, "image"), ({"format": "gif"}, "unknown key")):
        path.write_text(json.dumps({"prompt": "p", **bad}) + "\n", encoding="utf-8")
        with pytest.raises(SanaError, match=message):
            read_prompts(path)


def test_jsonl_prompts_file_with_overrides(tmp_path):
    path = tmp_path / "batch.jsonl"
    lines = [
        {"prompt": "a red fox", "seed": 3, "steps": 12, "cfg": 5, "negative": "blurry", "num": 2},
        {"prompt": "猫", "width": 1536, "height": 1024, "lora": "style.safetensors:0.7", "out": "cats/"},
        {"prompt": "a dog", "res": 1024, "pag": 2, "pag_layer": 0, "sampler": "flow-euler", "shift": 3,
         "lora": [{"path": "a.safetensors", "scale": 0.5}, "b.safetensors"]},
    ]
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n\n", encoding="utf-8")
    jobs = read_prompts(path)
    assert [job.prompt for job in jobs] == ["a red fox", "猫", "a dog"]
    assert jobs[0].overrides == {"seed": 3, "steps": 12, "cfg": 5.0, "negative": "blurry", "num": 2}
    assert jobs[1].overrides == {"res": "1536x1024", "lora": ["style.safetensors:0.7"], "out": "cats/"}
    assert jobs[2].overrides == {"res": "1024", "pag": 2.0, "pag_layer": 0, "sampler": "flow-euler", "shift": 3.0,
                                 "lora": ["a.safetensors:0.5", "b.safetensors"]}


def test_jsonl_is_recognised_without_the_suffix(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('{"prompt": "a"}\n# comment\n{"prompt": "b", "seed": 1}\n{"prompt": "c", "seed": -1}\n')
    assert [(job.prompt, job.overrides) for job in read_prompts(path)] == [("a", {}), ("b", {"seed": 1}),
                                                                            ("c", {"seed": -1})]  # -1: random


@pytest.mark.parametrize("bad_line, message", [
    ('{"prompt": "x", ', "line 3: not valid JSON"),
    ('{"prompt": "x", "guidance": 3}', "line 3: unknown key 'guidance'"),
    ('{"seed": 3}', 'line 3: "prompt" is missing'),
    ('["x"]', "line 3: expected a JSON object"),
    ('{"prompt": "x", "seed": "7"}', 'line 3: "seed" must be an integer >= 0, or -1'),
    ('{"prompt": "x", "seed": -2}', 'line 3: "seed" must be an integer >= 0, or -1'),
    ('{"prompt": "x", "steps": 0}', 'line 3: "steps" must be an integer >= 1'),
    ('{"prompt": "x", "cfg": true}', 'line 3: "cfg" must be a number'),
    ('{"prompt": "x", "width": 512}', 'line 3: give both "width" and "height"'),
    ('{"prompt": "x", "res": 512, "width": 512, "height": 512}', 'line 3: give "res" or "width"/"height"'),
    ('{"prompt": "x", "lora": [3]}', 'line 3: "lora" must be'),
], ids=["json", "unknown-key", "no-prompt", "not-object", "seed-type", "seed-range", "steps-range", "cfg-bool", "half-size",
        "two-sizes", "lora-type"])
def test_bad_jsonl_lines_name_the_line(tmp_path, bad_line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n\n' + bad_line + "\n")
    with pytest.raises(SanaError) as caught:
        read_prompts(path)
    assert f"{path} {message}" in str(caught.value)


@pytest.mark.parametrize("content", ["", "\n  \n", "# only a comment\n"], ids=["empty", "blank", "comments"])
def test_prompts_file_without_prompts_is_an_error(tmp_path, content):
    path = tmp_path / "p.txt"
    path.write_text(content)
    with pytest.raises(SanaError, match="has no prompts"):
        read_prompts(path)


def test_prompts_file_missing_or_not_text(tmp_path):
    with pytest.raises(SanaError, match="not found"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SanaError, match="not UTF-8"):
        read_prompts(tmp_path / "binary.txt")
