"""Cheque-like test images rendered with Pillow and the Noto CJK fonts (apt: fonts-noto-cjk),
each with the text it holds: Chinese and Latin lines in several sizes, some pages upside
down, some on a noisy background. Deterministic for a seed. Used by the accuracy test and
the PP-OCR benchmark."""
import io
import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = [
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
]

PAYEES = ["上海浦东发展有限公司", "北京华夏建设集团", "深圳前海科技有限公司", "广州白云物流中心", "杭州西湖茶叶合作社"]
BANKS = ["中国工商银行", "中国建设银行", "中国农业银行", "招商银行", "交通银行"]
DIGITS_CN = "零壹贰叁肆伍陆柒捌玖"
PURPOSES = ["货款", "工程款", "服务费", "租金", "材料费"]


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
        noise = Image.effect_noise((width, height), 40).convert("RGB")
        page = Image.blend(page, noise, 0.25)
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
