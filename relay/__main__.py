import os
import sys

from relay.cli import main

sys.setswitchinterval(float(os.environ.get("RELAY_SWITCH", "0.005")))
sys.exit(main())
