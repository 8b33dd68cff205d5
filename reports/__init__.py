"""tritoncnn.reports"""
