"""privsplit.attacks."""
