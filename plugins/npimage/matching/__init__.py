"""Matching: hashes, scores and bands of a pair, the exact top-k compare, one-image queries."""
