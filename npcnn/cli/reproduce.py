"""``npcnn reproduce``: train both variants, run every analysis, write the report."""


def register(sub):
    p = sub.add_parser("reproduce", help="regenerate the whole report from your own run (resumable)",
                       description="Train with and without BatchNorm, then filters, feature maps, occlusion, "
                                   "saliency, the report's three attacks and the robustness curves, and write "
                                   "DIR/report.html. Rerunning reuses every finished stage whose settings match.")
    p.add_argument("--out", default="runs/reproduce", help="default: runs/reproduce")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--data-dir", help="folder with the four IDX files")
    p.add_argument("--quick", action="store_true", help="a subset, fewer epochs and steps: every section in minutes")
    p.add_argument("--seed", type=int, default=0)
    defend = p.add_mutually_exclusive_group()
    defend.add_argument("--defend", dest="defend", action="store_true", default=True,
                        help="(the default) also train the net on PGD-5 examples (eps 0.3, Wong et al.'s lr schedule) "
                             "and write 'Defending the net': both nets under FGSM, PGD with restarts and APGD, "
                             "and the robust net's class images, saliency maps and targeted attacks")
    defend.add_argument("--no-defend", dest="defend", action="store_false",
                        help="leave the robust net out (about half the time of the whole reproduction)")
    p.set_defaults(func=run)


def run(args):
    from ..pipeline import reproduce

    reproduce(args.out, dataset=args.dataset, quick=args.quick, data_dir=args.data_dir, seed=args.seed,
              defend=args.defend)
