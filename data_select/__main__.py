from data_select.cli import main

raise SystemExit(main())
