"""tritoncnn.models"""
