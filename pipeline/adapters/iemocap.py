"""stub"""
def load(root, params, adapter): raise NotImplementedError
