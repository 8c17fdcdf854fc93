"""`comfyui-flux2 models`: every model with its providers, limits and the price of one megapixel."""
from __future__ import annotations

from ..flux2.pricing import format_usd


def add_parser(sub) -> None:
    sub.add_parser("models", help="list models, limits and prices").set_defaults(handler=command)


def command(args) -> int:
    from ..flux2.models import MODELS
    from ..flux2.pricing import estimate
    print(f"{'model':26} {'provider':9} {'id':22} {'refs':>4} {'sides':>10} {'1 MP price':>10}")
    for m in MODELS.values():
        for provider, pm in m.providers.items():
            est = estimate(m, provider, 1024, 1024)
            print(f"{m.name:26} {provider:9} {pm.model_id:22} {pm.max_refs:>4} {pm.min_side:>4}-{m.max_side:<5} "
                  f"{format_usd(est.usd):>10}")
    return 0
