"""HTTP plumbing shared by every API: content negotiation and error responses."""
