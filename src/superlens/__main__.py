from superlens.cli import main

raise SystemExit(main())
