# pragma version ~=0.4.3
"""
@title Staking: validator stake, unbonding withdrawals, slashing of double votes, reward balances
@notice The chain reads `getValidators()` at the end of every epoch (`epochLength` blocks) to build
        the next epoch's validator set. A validator is any account whose bonded stake is > 0; bonded
        stake is always either 0 or >= minStake.
        Slashed and penalized stake is burned: it stays locked in this contract forever and is
        counted in `totalBurned`.
        Vote digest (see consensus/votes.py):
        keccak256(abi.encode(uint256 chainId, uint256 height, uint256 round, uint256 step, bytes32 blockHash))
        signed as r || s || v (65 bytes, v in {27, 28}); steps 0=proposal 1=prevote 2=precommit.
"""

MAX_VALIDATORS: constant(uint256) = 64
BPS: constant(uint256) = 10000
MAX_STEP: constant(uint256) = 2

interface ISwarmRounds:
    def currentRound() -> uint256: view
    def attestationOf(round: uint256, validator: address) -> bytes32: view

struct Vote:
    height: uint256
    round: uint256
    step: uint256
    blockHash: bytes32
    signature: Bytes[65]

event Deposited:
    account: indexed(address)
    amount: uint256
    newStake: uint256

event ValidatorAdded:
    validator: indexed(address)
    stake: uint256

event ValidatorRemoved:
    validator: indexed(address)

event WithdrawalRequested:
    account: indexed(address)
    amount: uint256
    releaseBlock: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256

event Slashed:
    offender: indexed(address)
    reporter: indexed(address)
    height: uint256
    round: uint256
    step: uint256
    amount: uint256

event Penalized:
    validator: indexed(address)
    amount: uint256
    bps: uint256

event RewardCredited:
    account: indexed(address)
    amount: uint256

event RewardsClaimed:
    account: indexed(address)
    amount: uint256

event RewardPoolFunded:
    funder: indexed(address)
    amount: uint256

swarmRounds: public(address)
epochLength: public(uint256)
unbondingBlocks: public(uint256)
slashFractionBps: public(uint256)
minStake: public(uint256)

stakeOf: public(HashMap[address, uint256])
totalStake: public(uint256)
validatorList: DynArray[address, MAX_VALIDATORS]
validatorSlot: HashMap[address, uint256]  # index in validatorList + 1; 0 = not a validator

pendingWithdrawal: public(HashMap[address, uint256])
withdrawableAt: public(HashMap[address, uint256])
totalUnbonding: public(uint256)

rewardOf: public(HashMap[address, uint256])
totalRewardsOwed: public(uint256)
rewardPool: public(uint256)
totalBurned: public(uint256)

slashedAt: HashMap[bytes32, bool]  # keccak256(abi_encode(offender, height, round, step))


@deploy
def __init__(
    swarmRounds: address,
    epochLength: uint256,
    unbondingBlocks: uint256,
    slashFractionBps: uint256,
    minStake: uint256,
    rewardPool: uint256,
    validators: DynArray[address, MAX_VALIDATORS],
    stakes: DynArray[uint256, MAX_VALIDATORS],
):
    assert swarmRounds != empty(address), "init: zero SwarmRounds address"
    assert epochLength > 0, "init: zero epoch length"
    assert slashFractionBps <= BPS, "init: slash fraction above 10000 bps"
    assert minStake > 0, "init: zero min stake"
    assert len(validators) == len(stakes), "init: validators and stakes differ in length"
    self.swarmRounds = swarmRounds
    self.epochLength = epochLength
    self.unbondingBlocks = unbondingBlocks
    self.slashFractionBps = slashFractionBps
    self.minStake = minStake
    self.rewardPool = rewardPool
    for i: uint256 in range(len(validators), bound=MAX_VALIDATORS):
        v: address = validators[i]
        assert v != empty(address), "init: zero validator address"
        assert self.stakeOf[v] == 0, "init: duplicate validator"
        assert stakes[i] >= minStake, "init: stake below min stake"
        self._bond(v, stakes[i])


# ---------------------------------------------------------------- internal bookkeeping

@internal
def _bond(account: address, amount: uint256):
    if self.validatorSlot[account] == 0:
        assert len(self.validatorList) < MAX_VALIDATORS, "deposit: validator set full"
        self.validatorList.append(account)
        self.validatorSlot[account] = len(self.validatorList)
        log ValidatorAdded(validator=account, stake=amount)
    self.stakeOf[account] += amount
    self.totalStake += amount


@internal
def _removeValidator(account: address):
    slot: uint256 = self.validatorSlot[account]
    last: address = self.validatorList[len(self.validatorList) - 1]
    self.validatorList[slot - 1] = last
    self.validatorSlot[last] = slot
    self.validatorList.pop()
    self.validatorSlot[account] = 0
    log ValidatorRemoved(validator=account)


@internal
def _startUnbonding(account: address, amount: uint256):
    release: uint256 = block.number + self.unbondingBlocks
    self.pendingWithdrawal[account] += amount
    self.withdrawableAt[account] = release
    self.totalUnbonding += amount
    log WithdrawalRequested(account=account, amount=amount, releaseBlock=release)


@internal
def _unbond(account: address, amount: uint256):
    """Move `amount` of bonded stake into unbonding; leaves the set when nothing stays bonded."""
    self.stakeOf[account] -= amount
    self.totalStake -= amount
    if self.stakeOf[account] == 0:
        self._removeValidator(account)
    self._startUnbonding(account, amount)


@internal
def _burn(account: address, bps: uint256) -> uint256:
    """Burn `bps` of the account's bonded stake; a remainder below minStake is forced into unbonding."""
    stake: uint256 = self.stakeOf[account]
    amount: uint256 = stake * bps // BPS
    self.stakeOf[account] = stake - amount
    self.totalStake -= amount
    self.totalBurned += amount
    remaining: uint256 = stake - amount
    if remaining < self.minStake and remaining > 0:
        self._unbond(account, remaining)
    elif remaining == 0 and self.validatorSlot[account] != 0:
        self._removeValidator(account)
    return amount


@internal
@view
def _signer(vote: Vote) -> address:
    assert len(vote.signature) == 65, "slash: signature is not 65 bytes"
    v: uint256 = convert(slice(vote.signature, 64, 1), uint256)
    assert v == 27 or v == 28, "slash: signature v is not 27 or 28"
    digest: bytes32 = keccak256(
        abi_encode(chain.id, vote.height, vote.round, vote.step, vote.blockHash)
    )
    r: bytes32 = extract32(vote.signature, 0)
    s: bytes32 = extract32(vote.signature, 32)
    return ecrecover(digest, v, r, s)


# ---------------------------------------------------------------- stake

@external
@payable
def deposit():
    """Bond msg.value; the sender joins the validator set when its stake reaches minStake."""
    assert msg.value > 0, "deposit: zero value"
    newStake: uint256 = self.stakeOf[msg.sender] + msg.value
    assert newStake >= self.minStake, "deposit: stake below min stake"
    self._bond(msg.sender, msg.value)
    log Deposited(account=msg.sender, amount=msg.value, newStake=newStake)


@external
def requestWithdraw(amount: uint256):
    """Start unbonding `amount`; it can be withdrawn `unbondingBlocks` blocks later. Not while the sender's
    attestation of the open round stands: SwarmRounds counts an attestation's stake as it was when cast,
    against the total stake when the round finalizes, so stake that attested and then left could be cast
    again from another account (a hash finalized with less than 2/3 of the stake), and it would escape the
    penalty for a wrong attestation."""
    assert amount > 0, "requestWithdraw: zero amount"
    stake: uint256 = self.stakeOf[msg.sender]
    assert amount <= stake, "requestWithdraw: amount exceeds stake"
    remaining: uint256 = stake - amount
    assert remaining == 0 or remaining >= self.minStake, "requestWithdraw: remaining stake below min stake"
    rounds: ISwarmRounds = ISwarmRounds(self.swarmRounds)
    open: uint256 = staticcall rounds.currentRound()
    assert staticcall rounds.attestationOf(open, msg.sender) == empty(bytes32), \
        "requestWithdraw: attested in the open round (wait until it finalizes)"
    self._unbond(msg.sender, amount)


@external
@nonreentrant
def withdraw():
    """Pay out the whole pending withdrawal once its unbonding delay has passed."""
    amount: uint256 = self.pendingWithdrawal[msg.sender]
    assert amount > 0, "withdraw: nothing pending"
    assert block.number >= self.withdrawableAt[msg.sender], "withdraw: still unbonding"
    self.pendingWithdrawal[msg.sender] = 0
    self.withdrawableAt[msg.sender] = 0
    self.totalUnbonding -= amount
    raw_call(msg.sender, b"", value=amount)
    log Withdrawn(account=msg.sender, amount=amount)


# ---------------------------------------------------------------- validator set

@external
@view
def getValidators() -> (DynArray[address, MAX_VALIDATORS], DynArray[uint256, MAX_VALIDATORS]):
    """The current validator set and stakes (the chain reads this at epoch boundaries)."""
    stakes: DynArray[uint256, MAX_VALIDATORS] = []
    for v: address in self.validatorList:
        stakes.append(self.stakeOf[v])
    return self.validatorList, stakes


@external
@view
def validatorCount() -> uint256:
    return len(self.validatorList)


@external
@view
def isValidator(account: address) -> bool:
    return self.validatorSlot[account] != 0


@external
@view
def epochOf(blockNumber: uint256) -> uint256:
    return blockNumber // self.epochLength


@external
@view
def isSlashed(offender: address, height: uint256, round: uint256, step: uint256) -> bool:
    return self.slashedAt[keccak256(abi_encode(offender, height, round, step))]


@external
@view
def liabilities() -> uint256:
    """Everything this contract may still have to pay out or keep locked; balance must cover it."""
    return self.totalStake + self.totalUnbonding + self.totalRewardsOwed + self.rewardPool + self.totalBurned


# ---------------------------------------------------------------- slashing

@external
def slash(offender: address, voteA: Vote, voteB: Vote) -> uint256:
    """Burn slashFractionBps of `offender`'s stake given two conflicting votes it signed."""
    assert voteA.height == voteB.height and voteA.round == voteB.round and voteA.step == voteB.step, "slash: votes are for different height/round/step"
    assert voteA.step <= MAX_STEP, "slash: step is not 0, 1 or 2"
    assert voteA.blockHash != voteB.blockHash, "slash: votes have the same block hash"
    assert self.validatorSlot[offender] != 0, "slash: offender is not a validator"
    key: bytes32 = keccak256(abi_encode(offender, voteA.height, voteA.round, voteA.step))
    assert not self.slashedAt[key], "slash: already slashed for this height/round/step"
    assert self._signer(voteA) == offender, "slash: vote A not signed by offender"
    assert self._signer(voteB) == offender, "slash: vote B not signed by offender"
    self.slashedAt[key] = True
    amount: uint256 = self._burn(offender, self.slashFractionBps)
    log Slashed(offender=offender, reporter=msg.sender, height=voteA.height, round=voteA.round, step=voteA.step, amount=amount)
    return amount


# ---------------------------------------------------------------- rewards (SwarmRounds only)

@external
def creditReward(account: address, amount: uint256) -> uint256:
    """Credit up to `amount` from the reward pool; returns what was credited (pool may run dry)."""
    assert msg.sender == self.swarmRounds, "staking: caller is not SwarmRounds"
    credited: uint256 = min(amount, self.rewardPool)
    if credited == 0:
        return 0
    self.rewardPool -= credited
    self.rewardOf[account] += credited
    self.totalRewardsOwed += credited
    log RewardCredited(account=account, amount=credited)
    return credited


@external
def penalize(validator: address, bps: uint256) -> uint256:
    """Burn `bps` of a validator's stake for attesting a wrong aggregate; returns the amount burned."""
    assert msg.sender == self.swarmRounds, "staking: caller is not SwarmRounds"
    assert bps <= BPS, "penalize: bps above 10000"
    amount: uint256 = self._burn(validator, bps)
    log Penalized(validator=validator, amount=amount, bps=bps)
    return amount


@external
@nonreentrant
def claimRewards() -> uint256:
    """Pay the sender its whole reward balance."""
    amount: uint256 = self.rewardOf[msg.sender]
    assert amount > 0, "claimRewards: nothing to claim"
    self.rewardOf[msg.sender] = 0
    self.totalRewardsOwed -= amount
    raw_call(msg.sender, b"", value=amount)
    log RewardsClaimed(account=msg.sender, amount=amount)
    return amount


@external
@payable
def fundRewardPool():
    """Anyone may top up the reward pool."""
    assert msg.value > 0, "fundRewardPool: zero value"
    self.rewardPool += msg.value
    log RewardPoolFunded(funder=msg.sender, amount=msg.value)
