"""``torchrun ... -m fedmtl.engine.torchrun`` (like ``-m fedmtl.engine.distributed``) runs the torchrun entry point,
:func:`fedmtl.runloop.torchrun.main`: it lives above the engines, beside the run loop it drives."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("fedmtl.runloop.torchrun", run_name="__main__")
