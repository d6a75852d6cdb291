"""Build the tiny synthetic MELD-format demo dataset used by tests and CI.

Writes MELD.Raw's layout (``{train,dev,test}_sent_emo.csv`` plus
``train_splits/``, ``dev_splits_complete/``, ``output_repeated_splits_test/``
holding ``dia{D}_utt{U}.mp4``) and a README.  Faces come from the public-domain
``skimage.data.astronaut()`` photo, speech is synthesised with espeak-ng and
all sentences were written for this project.  Five edge cases are planted
(no face, two faces, silent audio, missing file, corrupt file).

Usage::

    python data/demo/build_demo.py [--out data/demo] [--seed 0] [--verify]
    python data/demo/build_demo.py --verify-only
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from skimage import data as skdata

LOG = logging.getLogger("build_demo")

EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
CSV_COLUMNS = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
    "Utterance_ID", "Season", "Episode", "StartTime", "EndTime",
)
SPLIT_CSV = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
SPLIT_DIR = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}

FPS = 12
SIZE = 160  # single-face frame is SIZE x SIZE; two-face frame is 2*SIZE x SIZE
SAMPLE_RATE = 16000
PAD_S = 0.15  # silence added before and after the synthesised speech
ASTRONAUT_FACE_CENTER = (224, 117)  # (x, y) of the face in skimage's astronaut
FACE_CROP = 190  # source crop side -> face is ~90 px tall after resizing to SIZE

# espeak-ng prosody per emotion: pitch (0-99), speed (wpm), amplitude (0-200).
PROSODY = {
    "neutral": (50, 165, 100),
    "joy": (78, 180, 120),
    "surprise": (88, 170, 130),
    "anger": (40, 205, 190),
    "sadness": (22, 135, 70),
    "disgust": (32, 150, 110),
    "fear": (85, 215, 90),
}
# Per-emotion colour gain (R, G, B) and brightness, applied to the face frames.
TINT = {
    "neutral": ((1.00, 1.00, 1.00), 1.00),
    "joy": ((1.08, 1.04, 0.95), 1.08),
    "surprise": ((1.03, 1.03, 1.06), 1.10),
    "anger": ((1.15, 0.92, 0.90), 1.00),
    "sadness": ((0.90, 0.95, 1.12), 0.85),
    "disgust": ((0.95, 1.10, 0.90), 0.95),
    "fear": ((0.92, 1.00, 1.05), 0.80),
}
# Speaker -> (espeak voice variant, pitch offset, horizontal flip of the face).
SPEAKERS = {
    "Alex": ("en+m3", -8, False),
    "Sam": ("en+f3", 6, True),
    "Robin": ("en+f2", 2, False),
    "Jordan": ("en+m1", -4, True),
    "Casey": ("en+f4", 8, False),
    "Morgan": ("en+m5", -2, True),
}

# Planted edge cases: (split, dialogue, utterance) -> (kind, what it tests, expected status).
EDGE_CASES = {
    ("train", 1, 5): ("no_face", "video without any face (coffee photo), normal speech",
                      "`no_face`: visual features empty/masked, text+audio still used"),
    ("train", 2, 3): ("silent", "face video, audio track present but all zeros",
                      "`silent`: audio features of silence (RMS 0), not an error"),
    ("train", 3, 5): ("corrupt", "2 KB file: mp4 `ftyp` header followed by random bytes",
                      "`corrupt`: decode error caught, row kept text-only"),
    ("test", 0, 5): ("two_faces", "two faces side by side (320x160), normal speech",
                     "`multi_face`: still usable, pick one face (e.g. largest/most confident)"),
    ("test", 1, 3): ("missing", "CSV row exists but no mp4 is written",
                     "`missing`: row kept text-only, no crash"),
}
# Surprise turns that are bad news (MELD labels surprise as either polarity).
NEGATIVE_SURPRISE = {("train", 1, 2)}


@dataclass(frozen=True)
class Dialogue:
    """One conversation: split, MELD dialogue id, season/episode and (speaker, emotion, text) turns."""

    split: str
    dia: int
    season: int
    episode: int
    start_s: float
    turns: tuple[tuple[str, str, str], ...]


DIALOGUES = (
    Dialogue("train", 0, 2, 4, 61.2, (
        ("Alex", "neutral", "I brought the last box up from the car."),
        ("Sam", "joy", "I love this place, it's wonderful!"),
        ("Alex", "surprise", "Wait, a yellow kitchen? Really?"),
        ("Sam", "neutral", "The paint was on sale downstairs."),
        ("Alex", "disgust", "Ugh, the fridge smells disgusting."),
        ("Sam", "fear", "I'm scared to open it."),
        ("Alex", "joy", "Honestly, I'm so happy we live here now!"),
    )),
    Dialogue("train", 1, 2, 9, 412.7, (
        ("Robin", "neutral", "Jordan called this morning about work."),
        ("Jordan", "sadness", "I lost my job. I'm so sad."),
        ("Casey", "surprise", "What? No way! They fired you?"),
        ("Jordan", "anger", "They didn't even say why. I'm furious!"),
        ("Robin", "sadness", "I'm sorry, that's so sad."),
        ("Casey", "neutral", "We can check the job listings tomorrow."),
        ("Jordan", "joy", "Thank you both, you're the best!"),
    )),
    Dialogue("train", 2, 3, 2, 975.0, (
        ("Morgan", "neutral", "The table is booked for eight o'clock."),
        ("Sam", "disgust", "Eww, a hair in my soup. Gross!"),
        ("Morgan", "anger", "This is unacceptable! I'm sick of this place!"),
        ("Sam", "neutral", "I will ask the waiter for the bill."),
        ("Morgan", "surprise", "Oh wow, free dessert? Seriously?"),
        ("Sam", "joy", "Amazing, this cake is the best!"),
        ("Morgan", "fear", "What if we left the oven on? I'm nervous."),
    )),
    Dialogue("train", 3, 3, 7, 233.4, (
        ("Casey", "neutral", "The power went out ten minutes ago."),
        ("Robin", "fear", "I'm terrified of the dark. Don't leave me!"),
        ("Alex", "anger", "Who unplugged my computer? I'm so angry!"),
        ("Casey", "fear", "Did you hear that noise? I'm really afraid."),
        ("Robin", "sadness", "I miss my family so much."),
        ("Alex", "disgust", "Gross, this candle smells like rotten eggs."),
        ("Casey", "surprise", "Whoa, the lights are back? No way!"),
    )),
    Dialogue("train", 4, 4, 1, 1320.9, (
        ("Jordan", "neutral", "I saw Taylor at the station yesterday."),
        ("Morgan", "sadness", "We broke up. I cried all night."),
        ("Jordan", "anger", "Taylor lied to you? How dare they!"),
        ("Morgan", "sadness", "I feel so lonely now."),
        ("Jordan", "joy", "You'll be happy again, I promise. It'll be great!"),
        ("Morgan", "neutral", "I will make some tea for us."),
        ("Jordan", "disgust", "Yuck, sour milk. Revolting."),
    )),
    Dialogue("dev", 0, 5, 3, 188.3, (
        ("Alex", "neutral", "The train leaves from platform two at noon."),
        ("Casey", "joy", "I got the tickets, this trip will be fantastic!"),
        ("Robin", "surprise", "What? First class? No way!"),
        ("Alex", "fear", "I'm afraid we'll miss it. I'm so nervous."),
        ("Casey", "disgust", "Ugh, a sticky seat. Gross."),
        ("Robin", "neutral", "The conductor will check the tickets soon."),
    )),
    Dialogue("dev", 1, 5, 8, 847.6, (
        ("Sam", "neutral", "I finished the report for the client."),
        ("Jordan", "anger", "You sent it without my part? I'm furious!"),
        ("Sam", "sadness", "I'm sorry. I feel so sad about it."),
        ("Jordan", "neutral", "Just send the corrected version by Friday."),
        ("Sam", "joy", "Great, I'm so glad we sorted it out!"),
        ("Jordan", "surprise", "Oh! You fixed it already? Wow!"),
    )),
    Dialogue("test", 0, 6, 5, 305.1, (
        ("Morgan", "neutral", "The package arrived at the front desk."),
        ("Robin", "surprise", "Really? For me? Wow!"),
        ("Morgan", "joy", "Concert tickets! This is the best gift ever!"),
        ("Robin", "fear", "I'm terrified of big crowds. What if I panic?"),
        ("Morgan", "sadness", "That's sad. I miss our nights out."),
        ("Robin", "neutral", "I will think about it tonight."),
    )),
    Dialogue("test", 1, 6, 11, 1104.8, (
        ("Casey", "neutral", "The landlord is coming to fix the sink."),
        ("Alex", "disgust", "Eww, slimy water. Gross."),
        ("Sam", "anger", "He promised last month! This is unacceptable!"),
        ("Casey", "disgust", "That smell is disgusting, I feel sick."),
        ("Alex", "fear", "I'm afraid the pipe will burst. I'm really scared."),
        ("Sam", "joy", "Finally, the plumber is here! I'm so happy!"),
    )),
)


def sentiment(emotion: str, key: tuple[str, int, int]) -> str:
    """MELD-consistent sentiment; surprise is positive except the turns in NEGATIVE_SURPRISE."""
    if emotion == "neutral":
        return "neutral"
    if emotion == "surprise":
        return "negative" if key in NEGATIVE_SURPRISE else "positive"
    return "positive" if emotion == "joy" else "negative"


def fmt_time(seconds: float) -> str:
    """Format seconds as MELD's ``HH:MM:SS,mmm``."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def clip_rng(seed: int, split: str, dia: int, utt: int) -> np.random.Generator:
    """Per-clip RNG, stable across runs and independent of build order."""
    return np.random.default_rng([seed, zlib.crc32(f"{split}/{dia}/{utt}".encode())])


# --------------------------------------------------------------------------- audio
def synthesise(text: str, speaker: str, emotion: str, workdir: Path) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return float32 mono audio at SAMPLE_RATE, padded."""
    voice, pitch_off, _ = SPEAKERS[speaker]
    pitch, speed, amp = PROSODY[emotion]
    wav = workdir / "tts.wav"
    cmd = ["espeak-ng", "-w", str(wav), "-v", voice, "-p", str(int(np.clip(pitch + pitch_off, 0, 99))),
           "-s", str(speed), "-a", str(amp), text]
    subprocess.run(cmd, check=True, capture_output=True)
    audio, sr = sf.read(wav, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    g = np.gcd(sr, SAMPLE_RATE)
    audio = resample_poly(audio, SAMPLE_RATE // g, sr // g)
    audio = np.clip(audio, -0.98, 0.98)
    pad = np.zeros(int(PAD_S * SAMPLE_RATE))
    return np.concatenate([pad, audio, pad]).astype(np.float32)


# --------------------------------------------------------------------------- video
def _face_source(flip: bool) -> np.ndarray:
    """Square astronaut crop centred on the face, with 20 % margin each side for jitter."""
    img = skdata.astronaut()
    cx, cy = ASTRONAUT_FACE_CENTER
    half = int(FACE_CROP * 0.6)
    src = img[cy - half:cy + half, cx - half:cx + half]
    return np.ascontiguousarray(src[:, ::-1] if flip else src)


def _scene_source() -> np.ndarray:
    """Square crop of skimage's coffee photo (no face) for the no-face clip."""
    img = skdata.coffee()
    h, w = img.shape[:2]
    side = min(h, w)
    return np.ascontiguousarray(img[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2])


def _animate(src: np.ndarray, n: int, rng: np.random.Generator, crop_frac: float) -> list[np.ndarray]:
    """Smooth, deterministic per-frame translation/zoom of ``src`` rendered at SIZE x SIZE."""
    side = src.shape[0]
    base = side * crop_frac
    t = np.arange(n) / FPS
    ph = rng.uniform(0, 2 * np.pi, 3)
    fr = rng.uniform(0.4, 0.9, 3)
    dx = 0.04 * side * np.sin(2 * np.pi * fr[0] * t + ph[0])
    dy = 0.03 * side * np.sin(2 * np.pi * fr[1] * t + ph[1])
    zoom = 1.0 + 0.05 * np.sin(2 * np.pi * fr[2] * t + ph[2])
    frames = []
    for i in range(n):
        crop = base / zoom[i]
        scale = SIZE / crop
        x0 = side / 2 + dx[i] - crop / 2
        y0 = side / 2 + dy[i] - crop / 2
        mat = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], dtype=np.float64)
        frames.append(cv2.warpAffine(src, mat, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT))
    return frames


def _colour(frames: list[np.ndarray], emotion: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Apply the emotion tint plus a small per-frame brightness flicker."""
    gains, bright = TINT[emotion]
    flicker = 1.0 + rng.normal(0.0, 0.015, len(frames))
    out = []
    for f, fl in zip(frames, flicker):
        g = np.asarray(gains, dtype=np.float32) * np.float32(bright * fl)
        out.append(np.clip(f.astype(np.float32) * g, 0, 255).astype(np.uint8))
    return out


def render_frames(kind: str, speaker: str, emotion: str, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """RGB uint8 frames for a clip of ``kind`` ('face', 'no_face' or 'two_faces')."""
    flip = SPEAKERS[speaker][2]
    if kind == "no_face":
        frames = _animate(_scene_source(), n, rng, crop_frac=0.8)
    elif kind == "two_faces":
        left = _animate(_face_source(flip), n, rng, crop_frac=1 / 1.2)
        right = _animate(_face_source(not flip), n, rng, crop_frac=1 / 1.2)
        frames = [np.concatenate([a, b], axis=1) for a, b in zip(left, right)]
    else:
        frames = _animate(_face_source(flip), n, rng, crop_frac=1 / 1.2)
    return _colour(frames, emotion, rng)


def write_mp4(path: Path, frames: list[np.ndarray], audio: np.ndarray) -> None:
    """Mux H.264 (yuv420p) video and mono AAC audio into ``path`` with PyAV."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        # asm=0: x264's SIMD paths made the bitstream depend on heap contents (not reproducible);
        # the plain-C path is bit-exact across runs and still fast at this frame size.
        vs.options = {"crf": "30", "preset": "medium", "threads": "1", "g": str(4 * FPS), "x264-params": "asm=0"}
        vs.codec_context.time_base = Fraction(1, FPS)
        ast = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        ast.bit_rate = 24000
        for i, f in enumerate(frames):
            # RGB -> I420 via OpenCV (BT.601), so the bytes fed to x264 are fully defined.
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(f, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
            vf.pts = i
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        step = 1024
        for s in range(0, len(audio), step):
            chunk = audio[s:s + step]
            af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            af.sample_rate = SAMPLE_RATE
            af.pts = s
            af.time_base = Fraction(1, SAMPLE_RATE)
            for pkt in ast.encode(af):
                out.mux(pkt)
        for pkt in ast.encode():
            out.mux(pkt)


def write_corrupt(path: Path, rng: np.random.Generator) -> None:
    """Write 2 KB: a plausible mp4 ``ftyp`` box followed by random bytes (no ``moov``)."""
    ftyp = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
    path.write_bytes(ftyp + rng.integers(0, 256, 2048 - len(ftyp), dtype=np.uint8).tobytes())


# --------------------------------------------------------------------------- build
def build(out: Path, seed: int) -> list[dict]:
    """Generate CSVs, clips and README under ``out``; return the metadata rows."""
    out.mkdir(parents=True, exist_ok=True)
    for d in SPLIT_DIR.values():
        shutil.rmtree(out / d, ignore_errors=True)
        (out / d).mkdir()
    rows: list[dict] = []
    sr_no = {s: 0 for s in SPLIT_CSV}
    with tempfile.TemporaryDirectory() as tmp:
        for dlg in DIALOGUES:
            t = dlg.start_s
            for utt, (speaker, emotion, text) in enumerate(dlg.turns):
                key = (dlg.split, dlg.dia, utt)
                kind = EDGE_CASES.get(key, ("face",))[0]
                rng = clip_rng(seed, *key)
                audio = synthesise(text, speaker, emotion, Path(tmp))
                dur = len(audio) / SAMPLE_RATE
                n_frames = int(np.ceil(dur * FPS))
                path = out / SPLIT_DIR[dlg.split] / f"dia{dlg.dia}_utt{utt}.mp4"
                if kind == "corrupt":
                    write_corrupt(path, rng)
                elif kind != "missing":
                    if kind == "silent":
                        audio = np.zeros_like(audio)
                    frames = render_frames(kind if kind in ("no_face", "two_faces") else "face",
                                           speaker, emotion, n_frames, rng)
                    write_mp4(path, frames, audio)
                sr_no[dlg.split] += 1
                rows.append({
                    "Sr No.": sr_no[dlg.split], "Utterance": text, "Speaker": speaker, "Emotion": emotion,
                    "Sentiment": sentiment(emotion, key), "Dialogue_ID": dlg.dia, "Utterance_ID": utt,
                    "Season": dlg.season, "Episode": dlg.episode, "StartTime": fmt_time(t),
                    "EndTime": fmt_time(t + dur), "_split": dlg.split, "_kind": kind, "_dur": dur,
                })
                LOG.info("%-5s dia%d_utt%d %-8s %-9s %.2fs", dlg.split, dlg.dia, utt, emotion, kind, dur)
                t += dur + 0.2 + 0.4 * rng.random()
    for split, name in SPLIT_CSV.items():
        with open(out / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            for r in rows:
                if r["_split"] == split:
                    w.writerow([r[c] for c in CSV_COLUMNS])
    check_coverage(rows)
    (out / "README.md").write_text(readme(rows), encoding="utf-8")
    return rows


def emotion_counts(rows: list[dict], usable_only: bool = False) -> dict[str, dict[str, int]]:
    """Emotion counts per split, optionally excluding rows whose clip is missing/corrupt."""
    counts = {s: {e: 0 for e in EMOTIONS} for s in SPLIT_CSV}
    for r in rows:
        if usable_only and r["_kind"] in ("missing", "corrupt"):
            continue
        counts[r["_split"]][r["Emotion"]] += 1
    return counts


def check_coverage(rows: list[dict]) -> None:
    """Every emotion: >=2 usable clips in train, >=1 in dev and test."""
    need = {"train": 2, "dev": 1, "test": 1}
    for split, c in emotion_counts(rows, usable_only=True).items():
        short = [e for e, n in c.items() if n < need[split]]
        if short:
            raise ValueError(f"{split}: too few usable clips for {short}")


def readme(rows: list[dict]) -> str:
    """Render README.md (contents, provenance, licences, edge-case table, counts)."""
    counts = emotion_counts(rows)
    lines = [
        "# merc demo dataset (synthetic, MELD.Raw layout)",
        "",
        f"A tiny stand-in for MELD.Raw: {len(rows)} utterances in {len(DIALOGUES)} dialogues "
        "(train Dialogue_ID 0-4, dev 0-1, test 0-1; ids restart per split as in MELD), all 7 MELD emotions. "
        "CSV columns, file names and folder names match MELD exactly, so the pipeline can run end to end "
        "on CPU in seconds.",
        "",
        "## How it was built",
        "",
        "`python data/demo/build_demo.py --out data/demo --verify` (byte-for-byte reproducible with the "
        "same library versions; seed 0). Each clip is "
        f"H.264/yuv420p {SIZE}x{SIZE} (two-face clip {2 * SIZE}x{SIZE}) at {FPS} fps with mono AAC "
        f"{SAMPLE_RATE} Hz audio. Video: a face crop of the astronaut photo, gently panned/zoomed with a "
        "small brightness flicker and a slight per-emotion colour tint. Audio: espeak-ng speaking the "
        "utterance, voice variant per speaker and pitch/speed/amplitude per emotion. Clip length = speech "
        f"+ {PAD_S:.2f} s padding each side ({min(r['_dur'] for r in rows):.1f}-"
        f"{max(r['_dur'] for r in rows):.1f} s); StartTime/EndTime are cumulative within each dialogue. "
        "Speakers are invented names; sentiment follows MELD (joy positive, neutral neutral, "
        "anger/disgust/fear/sadness negative, surprise positive or negative).",
        "",
        "## Licences / provenance",
        "",
        "- Face images: `skimage.data.astronaut()` (Eileen Collins, NASA) - public domain.",
        "- No-face clip: `skimage.data.coffee()` (Rachel Michetti) - CC0, shipped with scikit-image.",
        "- Speech: synthesised with espeak-ng 1.51 (the program is GPL-3.0; the audio it generates is not "
        "covered by the GPL).",
        "- Sentences, speaker names and labels: written for this project (not taken from MELD/Friends).",
        "",
        "## Planted edge cases",
        "",
        "| split | clip | emotion | case | what it tests | expected status |",
        "|---|---|---|---|---|---|",
    ]
    for (split, dia, utt), (kind, what, status) in EDGE_CASES.items():
        r = next(x for x in rows if x["_split"] == split and x["Dialogue_ID"] == dia and x["Utterance_ID"] == utt)
        lines.append(f"| {split} | `{SPLIT_DIR[split]}/dia{dia}_utt{utt}.mp4` | {r['Emotion']} | {kind} | "
                     f"{what} | {status} |")
    lines += [
        "",
        "These are deliberate: do not \"fix\" the missing or corrupt file. All other clips contain exactly "
        "one face (facenet-pytorch MTCNN, prob > 0.95) and non-silent speech; `--verify` checks all of this "
        "(decoding, durations vs. CSV, face counts, silence, corrupt file failing to open).",
        "",
        "## Emotion counts (all rows; every class keeps >= 2 usable train clips and >= 1 in dev/test)",
        "",
        "| split | " + " | ".join(EMOTIONS) + " | total |",
        "|---|" + "---|" * (len(EMOTIONS) + 1),
    ]
    for split, c in counts.items():
        lines.append(f"| {split} | " + " | ".join(str(c[e]) for e in EMOTIONS) + f" | {sum(c.values())} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- verify
def _read_rows(out: Path) -> list[dict]:
    """Reload the CSVs and attach split/kind/expected duration."""
    rows = []
    for split, name in SPLIT_CSV.items():
        with open(out / name, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                if tuple(r) != CSV_COLUMNS:
                    raise ValueError(f"{name}: columns {tuple(r)} != {CSV_COLUMNS}")
                dia, utt = int(r["Dialogue_ID"]), int(r["Utterance_ID"])
                r["_split"] = split
                r["_kind"] = EDGE_CASES.get((split, dia, utt), ("face",))[0]
                st, en = (sum(float(x.replace(",", ".")) * m for x, m in zip(v.split(":"), (3600, 60, 1)))
                          for v in (r["StartTime"], r["EndTime"]))
                r["_dur"] = en - st
                rows.append(r)
    return rows


def verify(out: Path) -> bool:
    """Decode every clip, check durations, faces (MTCNN), silence and the corrupt/missing files."""
    from facenet_pytorch import MTCNN  # heavy import: only needed here

    mtcnn = MTCNN(keep_all=True, device="cpu")
    expected_faces = {"face": 1, "silent": 1, "two_faces": 2, "no_face": 0}
    ok = True
    rows = _read_rows(out)
    check_coverage(rows)
    for r in rows:
        split, dia, utt, kind = r["_split"], int(r["Dialogue_ID"]), int(r["Utterance_ID"]), r["_kind"]
        path = out / SPLIT_DIR[split] / f"dia{dia}_utt{utt}.mp4"
        name = f"{split}/dia{dia}_utt{utt}"
        if kind == "missing":
            good = not path.exists()
            LOG.info("%-16s missing  -> file absent: %s", name, good)
            ok &= good
            continue
        if kind == "corrupt":
            try:
                with av.open(str(path)) as c:
                    list(c.decode(video=0))
                good = False
                LOG.error("%-16s corrupt  -> unexpectedly decodes", name)
            except (av.FFmpegError, IndexError, ValueError) as exc:
                good = True
                LOG.info("%-16s corrupt  -> open fails (%s)", name, type(exc).__name__)
            ok &= good
            continue
        if not path.is_file():
            LOG.error("%-16s FAIL: file not found", name)
            ok = False
            continue
        with av.open(str(path)) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
            c.seek(0)
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(a)])
            vcodec, acodec, sr = v.codec_context.name, a.codec_context.name, a.rate
        vdur, adur = len(frames) / FPS, len(audio) / sr
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        picks = sorted({0, len(frames) // 2, len(frames) - 1})
        n_faces, n_raw, min_prob = [], [], 1.0
        for i in picks:
            boxes, probs = mtcnn.detect(frames[i])
            probs = [] if boxes is None else [float(p) for p in probs]
            keep = [p for p in probs if p > 0.95]
            n_faces.append(len(keep))
            n_raw.append(len(probs))
            min_prob = min([min_prob, *keep])
        checks = {
            "codecs": (vcodec, acodec) == ("h264", "aac"),
            "duration": abs(vdur - r["_dur"]) <= 1.5 / FPS and abs(adur - r["_dur"]) < 0.1,
            "faces": n_faces == n_raw and all(n == expected_faces[kind] for n in n_faces),
            "sentiment": r["Sentiment"] == sentiment(r["Emotion"], (split, dia, utt)),
            "audio": rms == 0.0 if kind == "silent" else rms > 0.01,
        }
        good = all(checks.values())
        ok &= good
        LOG.log(logging.INFO if good else logging.ERROR, "%-16s %-9s %dx%d %3d fr v=%.2fs a=%.2fs csv=%.2fs rms=%.4f faces=%s minp=%.3f %s",
                 name, kind, frames[0].shape[1], frames[0].shape[0], len(frames), vdur, adur, r["_dur"],
                 rms, n_faces, min_prob, "OK" if good else f"FAIL {[k for k, x in checks.items() if not x]}")
    LOG.info("verification %s", "PASSED" if ok else "FAILED")
    return ok


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="seed for the visual jitter / corrupt bytes")
    p.add_argument("--verify", action="store_true", help="verify the output after building")
    p.add_argument("--verify-only", action="store_true", help="only verify an existing build")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verify_only:
        rows = build(args.out, args.seed)
        LOG.info("built %d rows; counts %s", len(rows), emotion_counts(rows))
    if args.verify or args.verify_only:
        return 0 if verify(args.out) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
