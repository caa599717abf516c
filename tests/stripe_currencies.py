"""Stripe's zero-decimal currencies (docs.stripe.com/currencies#zero-decimal): amounts are
in whole units (¥1,000 is `amount_total` 1000), so a usd price in cents must never apply."""

ZERO_DECIMAL = (
    "bif",
    "clp",
    "djf",
    "gnf",
    "jpy",
    "kmf",
    "krw",
    "mga",
    "pyg",
    "rwf",
    "ugx",
    "vnd",
    "vuv",
    "xaf",
    "xof",
    "xpf",
)
