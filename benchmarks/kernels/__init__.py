"""Are the int4 kernels right, how fast are they alone and in the decode step, and which configs should they use?"""
