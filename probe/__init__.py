"""mvm probe package."""
