"""Allow `python -m appliance`."""

from appliance.cli import main

# Guarded: a process spawned by multiprocessing imports this module again (as __mp_main__),
# and must not run the command line of its parent a second time.
if __name__ == "__main__":
    main()
