from trainer.cli.main import console

console()
