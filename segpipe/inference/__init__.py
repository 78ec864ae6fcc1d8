"""Predicting images of any size: resized or by sliding windows; the segpipe-predict command."""
