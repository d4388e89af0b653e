"""Grading machinery of the qkv course: release, self-check and autograding (not lesson code)."""
