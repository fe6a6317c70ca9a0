"""The demo behind `make run` (`python -m demo`): one kiosk with simulated peripherals, a
local Mosquitto and the reference centre; synthetic residents enrolled every few seconds;
the broker cut for a while and restored; a live view of enrollments, backlog, link,
device health and the centre's count. A tool beside the service, not part of it: it
drives the installed console scripts as a user would (`ektp-central keys init`,
`ektp-agent keys init`, `ektp-central kiosk add`, the two `run` services,
`ektp-agent enroll --synthetic`, `ektp-agent status --json`, `ektp-central packets --json`).

Each run starts from an empty directory (default ./var/demo, wiped at start so that
every run is the same), which holds everything of the run::

    kiosk/agent.toml, kiosk/data/      the kiosk: key, outbox, simulator, API socket
    central/central.toml, central/     the centre: keys, store
    broker/mosquitto.conf              the broker's own config (127.0.0.1, a free port)
    logs/agent.log, central.log, mosquitto.log
    children.json                      the children's process groups (a later run reaps them)

Ctrl-C or SIGTERM: stop enrolling, give the backlog a moment to drain, stop the agent
(it publishes its offline status), the centre and the broker, and print a summary;
without a terminal its last line is one JSON object. A second Ctrl-C hurries it.

Modules, one job each:

    cli.py        the options; how long it runs (until Ctrl-C, or 60 s without a terminal)
    scenario.py   what it does: start, enroll and watch, cut and restore, drain, stop
    activity.py   the two threads while it runs: the enroller and the watcher
    state.py      what it knows, under one lock; the consistent readings; the summary
    stack.py      the processes it starts and stops (broker, centre, kiosk, short commands)
    workdir.py    its directory: layout, configs, the wipe, a killed run's leftovers
    view.py       what it shows: the live view, plain lines, the closing summary
"""
