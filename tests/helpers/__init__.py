"""Test helpers shared by every test package: free ports and addresses, processes."""
