"""`edgemeter quote` (rate one interaction round given by flags) and `edgemeter estimate`
(interactions a License device-year buys for a feature mix), over the core's default price book.

Both are thin shells: names become a round with firmware_py.rating.from_flags (the mapping the
device agent uses too), firmware_py.rating.rate prices it, firmware_py.billing.estimate runs the
calculator. Exit status: 0 done; 1 the round or mix broke a rule (stderr says which: "rule: ...");
2 the command line itself is malformed.
"""
from __future__ import annotations

import argparse
import json
import sys

from edgemeter.cloud import cliargs
from firmware_py import billing, rating
from firmware_py import pricebook as pb

LLM_CHOICES = ("chat", "kb", "translation", "radio", "stories", "photo-balanced", "photo-premium",
               "video", "photo-translation", "tour-guide")


def cny(ucny: int) -> str:
    """uCNY as 'CNY 0.005450' (exact, no floats)."""
    sign = "-" if ucny < 0 else ""
    a = abs(ucny)
    return "CNY %s%d.%06d" % (sign, a // 1000000, a % 1000000)


def per_thousand(ucny: int) -> str:
    """The CNY price per 1,000 calls of a per-call uCNY amount, as the spec writes it (5.45)."""
    whole, frac = divmod(ucny, 1000)
    return ("%d.%03d" % (whole, frac)).rstrip("0").rstrip(".")


def quote_parser() -> argparse.ArgumentParser:
    ap = cliargs.Parser(
        prog="edgemeter quote",
        description="Rate one interaction round with the default price book (exact integer uCNY).",
        epilog="Model names are case-insensitive with hyphens for spaces; deepseek*, glm*, kimi*, "
               "minimax* and qwen3-tts* are families. Without --model the LLM is the base model (1x). "
               "Exit status 1 names the broken rule.")
    ap.add_argument("--asr", choices=("lite", "standard"), help="speech recognition tier")
    ap.add_argument("--asr-model", metavar="NAME", help="ASR model (implies --asr standard)")
    ap.add_argument("--tts", choices=("lite", "standard"), help="speech synthesis tier")
    ap.add_argument("--tts-model", metavar="NAME", help="TTS model (implies --tts standard)")
    ap.add_argument("--intent", action="store_true", help="intent recognition in the round")
    ap.add_argument("--llm", metavar="|".join(LLM_CHOICES), help="the round's LLM capability")
    ap.add_argument("--model", metavar="NAME", help="the LLM's model (chat and kb)")
    ap.add_argument("--sentences", type=int, metavar="N", help="spoken sentences (radio/stories: one TTS call each)")
    ap.add_argument("--images", type=int, metavar="N", help="proactive image analyses (tour guide)")
    ap.add_argument("--image", metavar="WxH", help="image size (photo balanced: at most 640x480)")
    ap.add_argument("--direct", action="store_true", help="direct connection mode (photo balanced)")
    ap.add_argument("--json", action="store_true", help='print {"lines": [...], "total_ucny": INT}')
    return ap


def _fail(cmd: str, exc: object) -> int:
    print("edgemeter %s: %s" % (cmd, exc), file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = quote_parser()
    args = ap.parse_args(argv)
    book = pb.default()
    try:
        image = rating.parse_size(args.image) if args.image else None
    except ValueError as exc:
        ap.error(str(exc))
    try:
        rnd = rating.from_flags(book, asr=args.asr, asr_model=args.asr_model, tts=args.tts,
                                tts_model=args.tts_model, intent=args.intent, llm=args.llm,
                                model=args.model, sentences=args.sentences, images=args.images,
                                image=image, direct=args.direct)
        lines, total = rating.rate(book, rnd)
    except rating.RatingError as exc:
        return _fail("quote", "invalid round: %s" % exc)
    given = {pb.C_ASR: args.asr_model, pb.C_TTS: args.tts_model, pb.C_LLM: args.model}
    out = []
    for iid, calls, mult, ucny, mid in lines:
        row = book["items"][iid]
        name = pb.model_name(book, mid)
        shown = given.get(row[5]) if mid else None
        out.append({"item": row[1], "item_id": iid, "calls": calls, "unit": pb.UNIT_NAMES[row[3]],
                    "model": name, "model_id": mid, "model_given": shown or name,
                    "multiplier": mult, "ucny": ucny})
    if args.json:
        print(json.dumps({"lines": out, "total_ucny": total}))
        return 0
    print("%-18s %6s  %-34s %4s %10s" % ("item", "calls", "model", "x", "uCNY"))
    for ln in out:
        model = ln["model_given"] if ln["model_given"] == ln["model"] else "%s (%s)" % (ln["model_given"], ln["model"])
        print("%-18s %6d  %-34s %4d %10d" % (ln["item"], ln["calls"], model, ln["multiplier"], ln["ucny"]))
    print("%-18s %6s  %-34s %4s %10d" % ("total", "", "", "", total))
    print("= %s per round, CNY %s per 1,000 rounds (price book v%d %s)"
          % (cny(total), per_thousand(total), book["version"], book["hash"].hex()[:12]))
    return 0


def _parse_mix(text: str) -> list[tuple[str, int]]:
    mix = []
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not name or (sep and not weight.strip().isdigit()):
            raise ValueError("mix entries are NAME=WEIGHT with an integer weight, got %r" % part)
        mix.append((name.strip(), int(weight) if sep else 1))
    return mix


def estimate_main(argv: list[str] | None = None) -> int:
    names = ", ".join(n for n, _ in billing.SCENARIOS)
    ap = cliargs.Parser(
        prog="edgemeter estimate",
        description="Interactions one License device-year of a tier buys for a feature mix "
                    "(for reference, like the purchase page's calculator).",
        epilog="Named mixes (billing.txt's typical scenarios): %s. radio is 10 spoken sentences. "
               "Weights are integers (relative shares)." % names)
    ap.add_argument("--tier", required=True, choices=("trial", "basic", "standard"))
    ap.add_argument("--mix", default="standard-chat=1", metavar="NAME=WEIGHT,...",
                    help="weighted scenarios (default standard-chat=1)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    book = pb.default()
    try:
        mix = _parse_mix(args.mix)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        interactions = billing.estimate(book, args.tier, mix)
        num, den = billing.mix_cost(book, mix)
        costs = [(n, w, rating.total(book, billing.scenario(book, n))) for n, w in mix]
    except (billing.BillingError, rating.RatingError) as exc:
        return _fail("estimate", exc)
    units = billing.allowance(book, args.tier)
    tier = book["tiers"][pb.tier_id(book, args.tier)]
    if args.json:
        print(json.dumps({"tier": args.tier, "price_ucny": tier[2], "allowance_units": units,
                          "mix": [{"name": n, "weight": w, "ucny": c} for n, w, c in costs],
                          "interactions": interactions}))
        return 0
    print("%s tier: %s per device-year, %d pool units (1 unit = 1 uCNY of list-price usage)"
          % (args.tier, cny(tier[2]), units))
    for n, w, c in costs:
        print("  %-14s weight %-5d %7d uCNY per interaction" % (n, w, c))
    print("average %d/%d uCNY per interaction -> %d interactions per device-year"
          % (num, den, interactions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
