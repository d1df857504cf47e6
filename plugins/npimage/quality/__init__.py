"""Quality: evaluation against truth files and fitting of the score's weights."""
