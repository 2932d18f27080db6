"""Who may call and how much they may spend: client tokens, authentication, the caps ledger
and idempotency keys."""
