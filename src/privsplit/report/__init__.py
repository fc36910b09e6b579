"""privsplit.report."""
