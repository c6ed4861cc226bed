"""How fast is the whole worker, batch 1 and under load, and where does its time go?"""
