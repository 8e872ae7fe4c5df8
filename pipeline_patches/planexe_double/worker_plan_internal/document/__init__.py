"""Drafting the documents to find and to create (one LLM call per document)."""
