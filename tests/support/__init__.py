"""Helpers shared by the netns and lab tests."""
