"""Monitoring: the traffic log, drift and KPI monitors, alerts, the status page, retraining."""
