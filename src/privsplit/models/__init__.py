"""privsplit.models."""
