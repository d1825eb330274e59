"""mvm train package."""
