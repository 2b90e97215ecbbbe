"""Cheque-like test images rendered with Pillow and Debian's fonts, each with the text it
holds: Chinese and Latin lines in several sizes, some pages upside down, some on a noisy
background. Deterministic for a seed. `render` (Noto CJK only, PNG) feeds the benchmark;
`render_varied` (five CJK and three Latin faces from four packages, 24-44 px, PNG or JPEG)
is the accuracy set."""
import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = [
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
]

# The varied set's faces: Chinese lines in one of five faces of three families (Noto
# Sans/Serif CJK, WenQuanYi Zen Hei, AR PL UMing/UKai), Latin lines (amounts, invoice
# numbers, names) in DejaVu or Liberation. Debian packages: fonts-noto-cjk,
# fonts-wqy-zenhei, fonts-arphic-uming, fonts-arphic-ukai, fonts-dejavu-core, fonts-liberation2.
CJK_FONTS = FONTS[:2] + [
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/arphic/ukai.ttc",
]
LATIN_FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
]

PAYEES = ["上海浦东发展有限公司", "北京华夏建设集团", "深圳前海科技有限公司", "广州白云物流中心", "杭州西湖茶叶合作社"]
BANKS = ["中国工商银行", "中国建设银行", "中国农业银行", "招商银行", "交通银行"]
DIGITS_CN = "零壹贰叁肆伍陆柒捌玖"
PURPOSES = ["货款", "工程款", "服务费", "租金", "材料费"]


def noise(rng, width, height, sigma):
    """Grey Gaussian noise around 128, drawn from `rng` (Pillow's effect_noise draws from
    C's rand(), so a page would differ from one process to the next)."""
    values = np.random.default_rng(rng.getrandbits(64)).normal(128, sigma, (height, width))
    return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L").convert("RGB")


def amount_in_words(rng):
    return "".join(rng.choice(DIGITS_CN) + unit for unit in ("万", "仟", "佰", "拾")) + rng.choice(DIGITS_CN) + "元整"


def cheque_lines(rng):
    """12-16 lines of a cheque, Chinese and Latin."""
    amount = rng.randint(1000, 999999) + rng.randint(0, 99) / 100
    lines = [
        f"{rng.choice(BANKS)} 转账支票",
        f"出票日期 {rng.randint(2020, 2026)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日",
        f"收款人 {rng.choice(PAYEES)}",
        f"付款行名称 {rng.choice(BANKS)}{rng.choice(['北京', '上海', '深圳'])}分行",
        f"出票人账号 {rng.randint(10**15, 10**16 - 1)}",
        f"人民币 {amount_in_words(rng)}",
        f"Amount RMB {amount:,.2f}",
        f"用途 {rng.choice(PURPOSES)}",
        f"Invoice No {rng.randint(2020, 2026)}{rng.randint(1000, 9999)}",
        "上列款项请从我账户内支付",
        f"Payee {rng.choice(['Zhang Wei', 'Li Na', 'Wang Fang', 'Chen Jie'])}",
        f"复核 {rng.choice(['王', '李', '赵'])}  记账 {rng.choice(['刘', '陈', '杨'])}",
    ]
    for _ in range(rng.randint(0, 4)):
        lines.append(f"附言 {rng.choice(PURPOSES)} {rng.randint(1, 99)}号")
    return lines


def render(seed, width=1600, height=None, upside_down=None, noisy=None):
    """One page: (PNG bytes, its lines of text in reading order)."""
    rng = random.Random(seed)
    lines = cheque_lines(rng)
    size = rng.choice([26, 30, 34])
    height = height or max(700, 60 + len(lines) * int(size * 1.75))
    background = (rng.randint(235, 255), rng.randint(235, 255), rng.randint(225, 250))
    page = Image.new("RGB", (width, height), background)
    if noisy if noisy is not None else rng.random() < 0.3:
        page = Image.blend(page, noise(rng, width, height, 40), 0.25)
    draw = ImageDraw.Draw(page)
    y = 30
    for text in lines:
        font = ImageFont.truetype(rng.choice(FONTS), size + rng.randint(-6, 8))
        x = rng.randint(30, 200)
        draw.text((x, y), text, fill=(rng.randint(0, 60),) * 3, font=font)
        y += int(size * 1.75)
    page = page.filter(ImageFilter.GaussianBlur(0.4))
    if upside_down if upside_down is not None else rng.random() < 0.25:
        page = page.rotate(180)
    out = io.BytesIO()
    page.save(out, format="PNG")
    return out.getvalue(), lines


def render_varied(seed, width=1600):
    """One page of the varied set: (image bytes, its lines, its format). 10-16 lines, each
    in its own face and size (24-44 px); a quarter upside down; some noisy; blurred a
    little; half of the pages JPEG (quality 80-95)."""
    rng = random.Random(10_000 + seed)
    lines = cheque_lines(rng)[: rng.randint(10, 20)]  # it gives 12-16
    sizes = [rng.randint(24, 44) for _ in lines]
    height = max(700, 60 + sum(int(s * 1.6) for s in sizes))
    background = (rng.randint(230, 255), rng.randint(230, 255), rng.randint(220, 250))
    page = Image.new("RGB", (width, height), background)
    if rng.random() < 0.4:
        page = Image.blend(page, noise(rng, width, height, rng.randint(20, 50)), rng.uniform(0.1, 0.3))
    draw = ImageDraw.Draw(page)
    y = 30
    for text, size in zip(lines, sizes):
        font = ImageFont.truetype(rng.choice(LATIN_FONTS if text.isascii() else CJK_FONTS), size)
        draw.text((rng.randint(30, 250), y), text, fill=(rng.randint(0, 70),) * 3, font=font)
        y += int(size * 1.6)
    page = page.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    if rng.random() < 0.25:
        page = page.rotate(180)
    out = io.BytesIO()
    kind = "JPEG" if rng.random() < 0.5 else "PNG"
    page.save(out, format=kind, **({"quality": rng.randint(80, 95)} if kind == "JPEG" else {}))
    return out.getvalue(), lines, kind
