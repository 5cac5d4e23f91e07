from ecliptic.cli.main import app

app(prog_name="ecliptic")
