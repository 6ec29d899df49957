"""Analyses of runs: each reads run directories, writes a tidy CSV and captioned figures."""
