"""The firewall model, its parsers and the packet evaluator."""
