from prompt.cli.main import main

raise SystemExit(main())
