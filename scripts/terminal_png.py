"""Render a terminal capture (text with ANSI colours, e.g. `tmux capture-pane -e -p`) as a PNG.

Used for the README's screenshot of `--show-probs`:

    tmux new-session -d -s shot -x 100 -y 24 \
        'llmgen generate --show-alternatives -t 0.9 --seed 4 -N 48 "Write a haiku about tea."; sleep 60'
    sleep 20; tmux capture-pane -t shot -e -p > /tmp/shot.ansi; tmux kill-session -t shot
    python scripts/terminal_png.py /tmp/shot.ansi docs/show-probs.png

Rich parses the escapes; Pillow (a matplotlib dependency, extra `plot`) draws each character cell
in DejaVu Sans Mono on a dark background.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from rich.color import Color
from rich.console import Console
from rich.terminal_theme import MONOKAI
from rich.text import Text

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE, PAD = 16, 14
THEME = MONOKAI


def rgb(color: Color | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if color is None or color.is_default:
        return default
    triplet = color.get_truecolor(THEME)
    return (triplet.red, triplet.green, triplet.blue)


def render(ansi: str, out: Path) -> None:
    lines = ansi.rstrip("\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    font, bold = ImageFont.truetype(FONT, SIZE), ImageFont.truetype(BOLD, SIZE)
    cell_w = font.getbbox("M")[2]
    cell_h = int(SIZE * 1.35)
    width = max(Text.from_ansi(line).cell_len for line in lines)
    background = (THEME.background_color.red, THEME.background_color.green, THEME.background_color.blue)
    foreground = (THEME.foreground_color.red, THEME.foreground_color.green, THEME.foreground_color.blue)
    image = Image.new("RGB", (2 * PAD + cell_w * width, 2 * PAD + cell_h * len(lines)), background)
    draw = ImageDraw.Draw(image)
    console = Console(width=width + 1, color_system="truecolor", force_terminal=True)
    for row, line in enumerate(lines):
        x = PAD
        y = PAD + row * cell_h
        for segment in Text.from_ansi(line).render(console):
            style = segment.style
            fg = rgb(style.color if style else None, foreground)
            if style and style.dim:
                fg = tuple((c + b) // 2 for c, b in zip(fg, background))
            if style and style.bgcolor is not None:
                bg = rgb(style.bgcolor, background)
                draw.rectangle([x, y, x + cell_w * len(segment.text), y + cell_h], fill=bg)
            draw.text((x, y), segment.text, font=bold if style and style.bold else font, fill=fg)
            x += cell_w * Text(segment.text).cell_len
    image.save(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Render a terminal capture with ANSI colours as a PNG.")
    parser.add_argument("capture", type=Path, help="the capture (tmux capture-pane -e -p > FILE)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args()
    render(args.capture.read_text(encoding="utf-8"), args.out)
