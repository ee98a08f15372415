"""Tokenising, collating and packing for the trainers."""
