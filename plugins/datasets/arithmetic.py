"""Generated text math problems: an offline stand-in for FRE's verifiable math data."""

from __future__ import annotations

import random

from lmmr1_core import Sample

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic(
    n: int = 1000,
    seed: int = 0,
    max_operand: int = 9,
    ops: str = "+",
    template: str = "What is {a} {op} {b}?",
) -> list[Sample]:
    """``n`` seeded problems ``a op b`` with operands in ``[0, max_operand]``; same seed, same list."""
    bad = set(ops) - set(_OPS)
    if bad:
        raise ValueError(f"arithmetic: unknown ops {sorted(bad)}; use some of {''.join(_OPS)}")
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice(ops)
        result = _OPS[op](a, b)
        samples.append(
            Sample(
                messages=[{"role": "user", "content": template.format(a=a, b=b, op=op)}],
                answer=str(result),
                meta={"reasoning": f"{a}{op}{b}={result}"},
                id=f"arithmetic-{seed}-{i}",
            )
        )
    return samples
