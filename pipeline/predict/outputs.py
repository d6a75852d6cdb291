"""``--out`` contents: ``predictions.csv``, ``timeline.png`` and ``index.html`` (the page to watch it).

Each file is written atomically and only these names (and a large video's copy) are written: other files in
``--out`` are never touched, so ``--out`` may be any folder, even the video's own.

The page is one HTML file with inline CSS/JS and no external resource: the video is embedded as a data URI when it is
at most ``EMBED_MAX_MB`` (else copied beside the page as ``video<ext>`` and referenced relatively), the transcript is a
table with one row per CSV row and an emotion badge, and the timeline has one lane per speaker. Clicking a transcript
row or a timeline block seeks the video to the utterance's start; the row being spoken is highlighted.
``index.html#selftest`` clicks every row itself and writes what the video's ``currentTime`` became into
``<pre id="selftest">`` (what the headless-browser check reads).
"""
from __future__ import annotations

import base64
import html
import json
import logging
import mimetypes
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common import atomic_write, atomic_write_text, check_out_dir, csv_safe, file_digest
from pipeline.errors import UserError

log = logging.getLogger("merc.predict")
EMBED_MAX_MB = 25.0
PALETTE = {"neutral": "#9e9e9e", "joy": "#f4c20d", "surprise": "#ff8c00", "fear": "#8e44ad", "sadness": "#3b7dd8",
           "disgust": "#2e8b57", "anger": "#d62728", "positive": "#2ca02c", "negative": "#d62728",
           "happy": "#f4c20d", "happiness": "#f4c20d", "sad": "#3b7dd8", "angry": "#d62728", "excited": "#e377c2",
           "frustrated": "#8c564b", "frustration": "#8c564b", "excitement": "#e377c2"}
EXTRA = ["#17becf", "#bcbd22", "#7f7f7f", "#1f77b4", "#ff7f0e", "#9467bd"]


def colours(labels: list[str]) -> dict[str, str]:
    out, k = {}, 0
    for c in labels:
        if c.lower() in PALETTE:
            out[c] = PALETTE[c.lower()]
        else:
            out[c], k = EXTRA[k % len(EXTRA)], k + 1
    return out


def plot_timeline(df: pd.DataFrame, labels: list[str], duration: float, path: Path) -> None:
    """Emotions per speaker over time: one lane per speaker, one bar per utterance coloured by its label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    col = colours(labels)
    speakers = list(dict.fromkeys(df["speaker"]))
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, duration / 5)), 1.0 + 0.5 * max(1, len(speakers))))
    for _, r in df.iterrows():
        y = speakers.index(r["speaker"])
        c = col.get(r["predicted"], "#ffffff")
        alpha = 0.35 + 0.65 * float(r["confidence"]) if r["predicted"] else 1.0
        ax.barh(y, max(r["end_s"] - r["start_s"], 0.05), left=r["start_s"], height=0.7, color=c, alpha=alpha,
                edgecolor="black", linewidth=0.4, hatch="" if r["predicted"] else "//")
    ax.set_yticks(range(len(speakers)), speakers)
    ax.invert_yaxis()
    ax.set_xlim(0, max(duration, float(df["end_s"].max()) if len(df) else 1.0))
    ax.set_xlabel("time (s)")
    ax.set_title("predicted emotion per utterance (opacity: confidence)")
    used = [c for c in labels if c in set(df["predicted"])]
    ax.legend(handles=[Patch(color=col[c], label=c) for c in used], loc="upper left", bbox_to_anchor=(1.0, 1.0),
              fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")  # path may be a temp name without the .png suffix
    plt.close(fig)


CSS = """
body{font-family:system-ui,sans-serif;margin:1em;max-width:1200px;color:#222}
#top{display:flex;gap:1em;align-items:flex-start;flex-wrap:wrap}
video{max-width:560px;width:100%;background:#000}
#meta{font-size:.9em;color:#555}
#lanes{margin:1em 0;border:1px solid #ccc;background:#fafafa}
#area{position:relative;margin-left:100px;border-left:1px solid #ccc}
.lane{position:relative;height:26px;border-bottom:1px solid #eee}
.lane span.name{position:absolute;left:-96px;width:92px;top:5px;font-size:.75em;color:#444;overflow:hidden;
  white-space:nowrap;text-overflow:ellipsis}
.blk{position:absolute;top:3px;height:20px;border-radius:3px;cursor:pointer;border:1px solid rgba(0,0,0,.3)}
#head{position:absolute;top:0;bottom:0;width:2px;background:#c00;pointer-events:none;z-index:3}
table{border-collapse:collapse;width:100%}
td,th{padding:4px 6px;border-bottom:1px solid #eee;text-align:left;vertical-align:top;font-size:.92em}
tr.utt{cursor:pointer} tr.utt:hover{background:#f0f6ff} tr.now{background:#fff3c4}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;color:#fff;font-size:.85em;white-space:nowrap;
       text-shadow:0 0 2px rgba(0,0,0,.6)}
.st{font-size:.8em;color:#a40}
"""

JS = """
const v=document.getElementById('v');
const rows=[...document.querySelectorAll('tr.utt')];
function seek(t){v.currentTime=t;}
rows.forEach(r=>r.addEventListener('click',()=>seek(parseFloat(r.dataset.start))));
document.querySelectorAll('.blk').forEach(b=>b.addEventListener('click',()=>seek(parseFloat(b.dataset.start))));
const dur=parseFloat(document.getElementById('lanes').dataset.duration);
v.addEventListener('timeupdate',()=>{
  const t=v.currentTime;
  document.getElementById('head').style.left=(100*t/dur)+'%';
  rows.forEach(r=>r.classList.toggle('now',t>=parseFloat(r.dataset.start)&&t<parseFloat(r.dataset.end)));
});
async function selftest(){
  const out={rows:rows.length,clicks:[],ready:v.readyState,duration:v.duration,error:v.error?v.error.code:null};
  for(const r of rows){
    const want=parseFloat(r.dataset.start);
    const seeked=new Promise(res=>v.addEventListener('seeked',()=>res(true),{once:true}));  // no timer: a
    // headless browser's virtual time would run it out while the (real-time) decoder seeks
    r.click();
    const ok=await seeked;
    out.clicks.push({utterance:parseInt(r.dataset.utterance),start:want,currentTime:v.currentTime,seeked:ok,
                     label:r.dataset.label});
  }
  document.getElementById('selftest').textContent=JSON.stringify(out);
}
if(location.hash==='#selftest'){
  if(v.readyState>=4)selftest();else v.addEventListener('canplaythrough',selftest,{once:true});
  v.addEventListener('error',()=>{document.getElementById('selftest').textContent=JSON.stringify({error:'video'});});
}
"""


def video_source(video: Path, out_dir: Path, embed_max_mb: float = EMBED_MAX_MB) -> str:
    """A data URI of the video when small enough, else its path relative to the page.

    Not embedded: a video already inside ``out_dir`` is referenced where it is; otherwise it is copied beside the
    page as ``video<ext>``, unless a different file has that name (a previous run's copy, a file of yours): then as
    ``video-<sha256[:12]><ext>``. No existing file is ever overwritten."""
    mime = mimetypes.guess_type(video.name)[0] or "video/mp4"
    if video.stat().st_size <= embed_max_mb * 1e6:
        return f"data:{mime};base64," + base64.b64encode(video.read_bytes()).decode()
    try:
        return urllib.parse.quote(video.resolve().relative_to(out_dir.resolve()).as_posix())
    except ValueError:
        pass
    digest = file_digest(video)
    for name in ("video" + video.suffix.lower(), f"video-{digest[:12]}{video.suffix.lower()}"):
        dest = out_dir / name
        if not dest.exists():
            atomic_write(dest, lambda tmp: shutil.copyfile(video, tmp))
            return name
        if dest.is_file() and not dest.is_symlink() and file_digest(dest) == digest:
            return name  # the same bytes are already there
    raise PredictOutputError(f"--out {out_dir}: {dest} exists with other content; it is not overwritten: move it "
                             "or choose another folder")


def render_page(df: pd.DataFrame, labels: list[str], duration: float, src: str, title: str, meta: dict) -> str:
    col = colours(labels)
    esc = html.escape
    df = df.fillna({c: "" for c in ("speaker", "text", "predicted", "modalities", "status", "error")})
    speakers = list(dict.fromkeys(df["speaker"]))
    lanes = []
    for s in speakers:
        blocks = []
        for _, r in df[df["speaker"] == s].iterrows():
            left, width = 100 * r["start_s"] / duration, max(0.3, 100 * (r["end_s"] - r["start_s"]) / duration)
            c = col.get(r["predicted"], "#fff")
            blocks.append(f'<div class="blk" data-start="{r["start_s"]}" style="left:{left:.3f}%;width:{width:.3f}%;'
                          f'background:{c}" title="{esc(str(r["predicted"]))} {r["start_s"]:.1f}s: '
                          f'{esc(r["text"][:80])}"></div>')
        lanes.append(f'<div class="lane"><span class="name">{esc(s)}</span>{"".join(blocks)}</div>')
    trs = []
    for _, r in df.iterrows():
        if r["predicted"]:
            badge = (f'<span class="badge" style="background:{col[r["predicted"]]}">{esc(r["predicted"])} '
                     f'{100 * r["confidence"]:.0f}%</span>')
        else:
            badge = '<span class="badge" style="background:#555">none</span>'
        st = "" if r["status"] == "ok" and not r["error"] else \
            f'<div class="st">{esc(r["status"])}{": " + esc(r["error"]) if r["error"] else ""}</div>'
        trs.append(f'<tr class="utt" data-utterance="{r["utterance"]}" data-start="{r["start_s"]}" '
                   f'data-end="{r["end_s"]}" data-label="{esc(str(r["predicted"]))}"><td>{r["utterance"]}</td>'
                   f'<td>{r["start_s"]:.2f}–{r["end_s"]:.2f}</td><td>{esc(r["speaker"])}</td>'
                   f'<td>{esc(r["text"])}{st}</td><td>{badge}</td><td>{esc(r["modalities"])}</td></tr>')
    info = " · ".join(f"{esc(k)}: {esc(str(v))}" for k, v in meta.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; media-src data: 'self' file:; img-src data:;
 style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>{CSS}</style></head><body>
<h2>{esc(title)}</h2>
<div id="top"><video id="v" controls preload="auto" src="{src}"></video><div id="meta">{info}</div></div>
<div id="lanes" data-duration="{duration}"><div id="area"><div id="head"></div>{"".join(lanes)}</div></div>
<table id="transcript"><thead><tr><th>#</th><th>time (s)</th><th>speaker</th><th>text</th><th>emotion</th>
<th>modalities</th></tr></thead><tbody>
{chr(10).join(trs)}
</tbody></table>
<pre id="selftest"></pre>
<script>{JS}</script>
</body></html>
"""


OUTPUTS = ["predictions.csv", "timeline.png", "index.html"]


class PredictOutputError(UserError):
    """An output folder predict cannot write into without replacing something that is not its own."""


def check_out(out: str | Path, inputs=()) -> Path:
    """``--out`` checked before any work (``pipeline.common.check_out_dir``): one line if it cannot be used."""
    try:
        return check_out_dir(out, OUTPUTS, inputs)
    except UserError as e:
        raise PredictOutputError(str(e)) from e


def write_outputs(out: str | Path, df: pd.DataFrame, labels: list[str], video: Path, duration: float,
                  meta: dict, embed_max_mb: float = EMBED_MAX_MB) -> Path:
    """Write the outputs into ``out`` (created if missing), each file atomically (temp file + rename), the page
    last. Only ``OUTPUTS`` (and a copy of a large video) are written: every other file in ``out`` is left alone.

    ``predictions.csv`` is spreadsheet-safe (``csv_safe``: a text cell starting with ``=``/``+``/``-``/``@`` gets a
    leading ``'``); the page shows the original text."""
    out = check_out(out, [video])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(csv_safe(df).to_csv(index=False), out / "predictions.csv")
    atomic_write(out / "timeline.png", lambda tmp: plot_timeline(df, labels, duration, tmp))
    src = video_source(Path(video), out, embed_max_mb)
    atomic_write_text(render_page(df, labels, duration, src, f"Emotions in {Path(video).name}", meta),
                      out / "index.html")
    return out


def summary(df: pd.DataFrame) -> str:
    """A few lines for the log: label counts and statuses."""
    counts = df["predicted"].replace("", "none").value_counts().to_dict()
    st = df["status"].value_counts().to_dict()
    return f"{len(df)} utterances; predicted {json.dumps(counts)}; status {json.dumps(st)}; " \
           f"mean confidence {np.nanmean(df['confidence'].astype(float)) if len(df) else float('nan'):.3f}"
