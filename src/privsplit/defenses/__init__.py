"""privsplit.defenses."""
