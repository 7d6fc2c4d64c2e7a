"""The torch executor and the harness that compares it with the cost model (``llmsim validate``)."""
