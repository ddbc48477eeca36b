"""Flower at the edge: thin ServerApp/ClientApp adapters over flip's plain training functions."""
