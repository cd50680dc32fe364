from onnxguard.cli import main

main()
