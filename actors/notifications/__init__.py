"""Notifications: the notifier actor, which decides, stores and delivers them."""
