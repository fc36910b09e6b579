"""privsplit.edge."""
