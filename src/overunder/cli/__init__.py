"""The command-line front: argv parsing, rendering and exit codes. No business logic here."""
