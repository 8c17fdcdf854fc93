import sys

try:
    from .cli import main
except KeyboardInterrupt:       # Ctrl-C while the CLI itself is still loading: one line, not a traceback
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)

sys.exit(main())
